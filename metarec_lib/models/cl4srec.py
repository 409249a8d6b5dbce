"""CL4SRec: SASRec trained with an added contrastive loss between augmented views of sequences.

Xie, Sun, Liu, Gao, Ding, Lin, Zheng & Cui (2022), "Contrastive Learning for Sequential
Recommendation", ICDE. The encoder, its next-item loss and its scoring are exactly SASRec's
(`metarec_lib.models.sasrec`, subclassed here); the only difference is the self-supervised term

    loss = next-item loss + cl_weight * InfoNCE(view 1, view 2),

where each training window gets two views, each made by one augmentation drawn at random
(per window and view) from
  * crop: a random contiguous run of floor(crop * n) items (at least 1) of the n items;
  * mask: floor(mask * n) random items replaced by a dedicated mask token (at most n - 1);
  * reorder: a random contiguous run of floor(reorder * n) items shuffled;
and the InfoNCE loss (NT-Xent) pulls the two views' sequence representations (the hidden state
at the last position, cosine similarity / tau, as in SimCLR's NT-Xent which the paper's loss
follows) together, with the other 2B - 2 views of the batch as negatives. Augmentations act on
the whole padded batch with tensor ops and draw all their randomness from the fit's generator.
The augmentation ratios (crop 0.6, mask 0.3, reorder 0.3) were not tuned here; the weight of
the contrastive term was (see `CL4SRec.defaults`): with SASRec's full-softmax loss the paper's
0.1 hurt on ML-100K, and 0.03 helped a little.

The study takes CL4SRec rather than BERT4Rec as its second transformer: Petrov & Macdonald
(2022), "A Systematic Review and Replicability Study of BERT4Rec for Sequential
Recommendation", RecSys, found that BERT4Rec needs far longer training than originally reported
to reach its published quality, which the study's time budget cannot pay; CL4SRec shares
SASRec's encoder, loss and training length, which isolates the effect of the contrastive term.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metarec_lib.models.registry import register
from metarec_lib.models.sasrec import SASRec
from metarec_lib.models.sequences import PAD
from metarec_lib.models.torch_base import Batch
from metarec_lib.tuning import LogUniform


def _lengths(seqs: torch.Tensor) -> torch.Tensor:
    return (seqs != PAD).sum(1)


def crop_view(seqs: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Each left-padded row (B, L) cut to a random contiguous run of max(1, floor(ratio * n))
    of its n items, left-padded again (an empty row stays empty)."""
    b, length = seqs.shape
    n = _lengths(seqs)
    keep = torch.minimum((ratio * n).floor().long().clamp(min=1), n)
    start = (torch.rand(b, generator=generator) * (n - keep + 1)).floor().long()
    start = torch.minimum(start, n - keep)  # guards against rounding up to n - keep + 1
    pos = torch.arange(length)
    src = (length - n + start - (length - keep))[:, None] + pos  # output p <- input src
    out = seqs.gather(1, src.clamp(0, length - 1))
    return out.masked_fill(pos[None, :] < (length - keep)[:, None], PAD)


def mask_view(
    seqs: torch.Tensor, ratio: float, token: int, generator: torch.Generator
) -> torch.Tensor:
    """floor(ratio * n) random items of each row (never all n) replaced by `token`."""
    real = seqs != PAD
    n = real.sum(1)
    k = torch.minimum((ratio * n).floor().long(), (n - 1).clamp(min=0))
    noise = torch.rand(seqs.shape, generator=generator).masked_fill(~real, 2.0)
    rank = noise.argsort(1).argsort(1)  # the k lowest-noise real positions are masked
    return seqs.masked_fill(rank < k[:, None], token)


def reorder_view(seqs: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A random contiguous run of floor(ratio * n) items of each row shuffled in place."""
    b, length = seqs.shape
    n = _lengths(seqs)
    width = (ratio * n).floor().long()
    offset = (torch.rand(b, generator=generator) * (n - width + 1)).floor().long()
    start = length - n + torch.minimum(offset, n - width)
    pos = torch.arange(length, dtype=torch.float64)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + width)[:, None])
    # Sort keys: a position outside the run keeps its index; inside, a uniform draw in
    # [start, start + width), so sorting permutes the run among itself and nothing else.
    u = torch.rand(seqs.shape, generator=generator, dtype=torch.float64)
    keys = torch.where(inside, start[:, None] + u * width[:, None], pos[None, :])
    return seqs.gather(1, keys.argsort(dim=1, stable=True))


def augment(
    seqs: torch.Tensor,
    generator: torch.Generator,
    *,
    crop: float,
    mask: float,
    reorder: float,
    mask_token: int,
) -> torch.Tensor:
    """One view of each row by an augmentation drawn uniformly per row (crop, mask, reorder)."""
    which = torch.randint(3, (len(seqs), 1), generator=generator)
    cropped = crop_view(seqs, crop, generator)
    masked = mask_view(seqs, mask, mask_token, generator)
    reordered = reorder_view(seqs, reorder, generator)
    return torch.where(which == 0, cropped, torch.where(which == 1, masked, reordered))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent: row i of z1 and row i of z2 are positives; every other row of both is a
    negative. Cosine similarity divided by tau; mean over the 2B anchors."""
    b = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / tau
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, -torch.inf)
    idx = torch.arange(b, device=z.device)
    return F.cross_entropy(sim, torch.cat([idx + b, idx]))


@register
class CL4SRec(SASRec):
    """SASRec plus CL4SRec's contrastive term (Xie et al. 2022), see the module docstring.

    Hyperparameters (besides SASRec's):
        cl_weight: weight of the InfoNCE loss; tau: its temperature.
        crop, mask, reorder: the augmentations' ratios (eta, gamma, beta in the paper).
    """

    name = "CL4SRec"
    # Measured on leave-last-one-out ML-100K, seed 42, with SASRec's defaults (validation /
    # test NDCG@10): cl_weight 0.03 0.112 / 0.105 (best epoch 16; fit 128 s, an epoch costs
    # 1.5-2x SASRec's for the two views); cl_weight 0.1 (the paper's) plateaued near 0.09-0.10
    # and 0.1 with learning_rate 2e-3 reached 0.097 / 0.076; tau 0.2 was worse (0.081).
    defaults: ClassVar[dict[str, Any]] = {
        **SASRec.defaults,
        "cl_weight": 0.03,
        "tau": 1.0,
        "crop": 0.6,
        "mask": 0.3,
        "reorder": 0.3,
    }
    space: ClassVar[dict[str, Any]] = {
        "cl_weight": LogUniform(0.01, 0.1),
        "tau": LogUniform(0.5, 2.0),
        "learning_rate": SASRec.space["learning_rate"],
    }
    n_extra_tokens = 1  # the mask token, id n_items + 1

    def __init__(self, *, device: str = "cpu", **params: Any) -> None:
        super().__init__(device=device, **params)
        p = self.params
        for key, ok, allowed in (("crop", 0 < p["crop"] <= 1, "(0, 1]"),
                                 ("mask", 0 <= p["mask"] < 1, "[0, 1)"),
                                 ("reorder", 0 <= p["reorder"] <= 1, "[0, 1]")):  # fmt: skip
            if not ok:
                raise ValueError(f"{self.name}: {key}={p[key]!r}; expected in {allowed}")

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        """SASRec's batches plus two augmented views of the inputs: (..., view1, view2)."""
        p = self.params
        kwargs = {"crop": float(p["crop"]), "mask": float(p["mask"]),
                  "reorder": float(p["reorder"]), "mask_token": self.n_items_ + 1}  # fmt: skip
        for batch in super().batches(generator):
            view1 = augment(batch[0], generator, **kwargs)
            yield (*batch, view1, augment(batch[0], generator, **kwargs))

    def loss(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        view1, view2 = batch[-2], batch[-1]
        z = module(torch.cat([view1, view2]), last=True)
        contrastive = info_nce(z[: len(view1)], z[len(view1) :], float(self.params["tau"]))
        return super().loss(module, batch[:-2]) + float(self.params["cl_weight"]) * contrastive
