"""A bounded in-process memo of trainings that several cells share.

A meta-learner's training for one seed serves every support size k, and a source pretraining
serves every transfer method at one target fraction and seed (see `models.meta` and
`models.transfer`). Cells that share one run on the same worker (`executors.LocalExecutor`'s
affinity), whose process remembers the training here. Entries are keyed by everything the
training depends on, so a hit is exactly what a new training would give.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class TrainingMemo:
    """At most `size` entries by key; the least recently used goes first when full."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"TrainingMemo: size={size!r}; expected >= 1")
        self.size = size
        self._entries: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any | None:
        """The entry under `key` (now the most recently used), or None."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: str, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
