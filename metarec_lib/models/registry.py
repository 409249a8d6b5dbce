"""Model names -> classes, so notebooks and configs refer to models by their `model` column."""

from __future__ import annotations

from typing import Any

from metarec_lib.models.base import Recommender

MODELS: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator: make a model available by its `name`."""
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} registered twice")
    MODELS[cls.name] = cls
    return cls


def model_class(name: str) -> type[Recommender]:
    """The registered class of a model name; unknown names list the known ones."""
    _import_all()
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def get_model(name: str, **params: Any) -> Recommender:
    """Instantiate a registered model by name."""
    return model_class(name)(**params)


def model_names() -> list[str]:
    _import_all()
    return sorted(MODELS)


def torch_model_names() -> list[str]:
    """The registered models trained by gradient steps in PyTorch (`gpu_capable`), in name
    order: the ones a GPU runs."""
    return [n for n in model_names() if MODELS[n].gpu_capable]


def _import_all() -> None:
    # Importing the model modules registers their classes.
    from metarec_lib.models import (  # noqa: F401
        als,
        bpr,
        caser,
        cfgan,
        cl4srec,
        content,
        ease,
        foldin,
        graph,
        gru4rec,
        knn,
        markov,
        meta,
        multitask,
        neumf,
        popularity,
        sasrec,
        svd,
        transfer,
    )
