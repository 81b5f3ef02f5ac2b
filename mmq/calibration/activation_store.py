"""Per-image block inputs of the calibration set, held for one block at a time: in memory up
to a byte budget, spilled to disk (``torch.save``) beyond it."""
import os
import shutil
import tempfile
from typing import Any, Iterator, List, Optional, Tuple

import torch


def _nbytes(item: Any) -> int:
    if torch.is_tensor(item):
        return item.numel() * item.element_size()
    if isinstance(item, (tuple, list)):
        return sum(_nbytes(x) for x in item)
    return 0


class ActivationStore:
    """An append-only sequence of items (tuples of tensors and plain values).

    Args:
        budget_bytes (int): Bytes kept in memory; later items go to ``spill_dir``.
        spill_dir (str, optional): Where spilled items go (a fresh temporary folder by
            default, removed by :meth:`close`).
    """

    def __init__(self, budget_bytes: int = 2 * 1024**3, spill_dir: Optional[str] = None) -> None:
        self.budget_bytes = budget_bytes
        self._spill_root = spill_dir
        self._dir: Optional[str] = None
        self._items: List[Tuple[bool, Any]] = []  # (on_disk, item or path)
        self.memory_bytes = 0
        self.disk_bytes = 0

    def append(self, item: Tuple) -> None:
        size = _nbytes(item)
        if self.memory_bytes + size <= self.budget_bytes:
            self._items.append((False, item))
            self.memory_bytes += size
            return
        if self._dir is None:
            if self._spill_root:
                os.makedirs(self._spill_root, exist_ok=True)
            self._dir = tempfile.mkdtemp(prefix='mmq-acts-', dir=self._spill_root)
        path = os.path.join(self._dir, f'{len(self._items):06d}.pt')
        torch.save(item, path)
        self._items.append((True, path))
        self.disk_bytes += size

    def sibling(self) -> 'ActivationStore':
        """An empty store with the same budget and spill folder (the next block's inputs)."""
        return ActivationStore(self.budget_bytes, self._spill_root)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Tuple:
        on_disk, item = self._items[index]
        return torch.load(item, weights_only=True) if on_disk else item

    def __iter__(self) -> Iterator[Tuple]:
        for i in range(len(self)):
            yield self[i]

    @property
    def spilled(self) -> int:
        """How many items live on disk."""
        return sum(1 for on_disk, _ in self._items if on_disk)

    def close(self) -> None:
        """Drop every item and remove spilled files."""
        self._items.clear()
        self.memory_bytes = self.disk_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
