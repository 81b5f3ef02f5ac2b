"""Per-image block inputs of the calibration set, held for one block at a time: on their
accelerator up to a device budget, then in host memory up to a byte budget, then spilled to
disk (``torch.save``). Items come back on the device they were appended from.

A store and its siblings (the images, each block's inputs and outputs, reconstruction's
inputs and targets: every store of one calibration) share one budget per tier, so the
budget bounds what a calibration keeps in memory in all, however many stores are open."""
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch

try:  # glibc's malloc_trim: absent elsewhere (macOS, musl), where it is not needed
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
except (OSError, AttributeError, TypeError):
    _malloc_trim = None


def release_free_heap() -> None:
    """Give the free pages of the C heap back to the system (glibc ``malloc_trim(0)``).

    Reading spilled items allocates tens of MB per item at detector resolution, next to the
    block's own temporaries. glibc raises its mmap threshold after such blocks are freed and
    then serves them from the heap, whose freed holes this pattern does not reuse: without
    this, a pass over 256 spilled 800x1333 Swin-T block inputs grew the process by ~2.5 GB
    every 30 s (to 22 GB) although the items and samples alive stayed within the budget.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _to(item: Any, device: torch.device) -> Any:
    if torch.is_tensor(item):
        return item.to(device)
    if isinstance(item, (tuple, list)):
        return type(item)(_to(x, device) for x in item)
    return item


def _accelerator(item: Any) -> Optional[torch.device]:
    """The first non-CPU device among the item's tensors (None: all on the CPU)."""
    if torch.is_tensor(item):
        return item.device if item.device.type != 'cpu' else None
    if isinstance(item, (tuple, list)):
        for x in item:
            device = _accelerator(x)
            if device is not None:
                return device
    return None


def _default_device_budget(device: torch.device) -> int:
    """Half of the device's free memory when the first item arrives (0 where unknown)."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 0


def _nbytes(item: Any) -> int:
    if torch.is_tensor(item):
        return item.numel() * item.element_size()
    if isinstance(item, (tuple, list)):
        return sum(_nbytes(x) for x in item)
    return 0


class MemoryBudget:
    """Bytes that a store and its siblings may keep in one tier, together."""

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit  # None: not known yet (the device tier, until its first item)
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit."""
        if self.limit is None or self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


class ActivationStore:
    """An append-only sequence of items (tuples of tensors and plain values).

    Args:
        budget_bytes (int): Bytes kept in host memory by this store and its siblings
            together (:meth:`sibling`); later items go to ``spill_dir``.
        spill_dir (str, optional): Where spilled items go (a fresh temporary folder by
            default, removed by :meth:`close`).
        device_budget_bytes (int, optional): Bytes of items appended from an accelerator
            (CUDA) kept there, shared with the siblings likewise; later ones move to host
            memory (and disk), and are moved back when read. Default: half of the device's
            free memory at the first such item.
        shared_with (ActivationStore, optional): Share that store's budgets (both tiers)
            instead of making new ones from the two budget arguments (see :meth:`sibling`).
    """

    def __init__(self, budget_bytes: int = 2 * 1024**3, spill_dir: Optional[str] = None,
                 device_budget_bytes: Optional[int] = None,
                 shared_with: Optional['ActivationStore'] = None) -> None:
        if shared_with is not None:
            self._host, self._device = shared_with._host, shared_with._device
        else:
            self._host = MemoryBudget(budget_bytes)
            self._device = MemoryBudget(device_budget_bytes)
        self._spill_root = spill_dir
        self._dir: Optional[str] = None
        # (on_disk, item or path, device to return it on: None = as stored)
        self._items: List[Tuple[bool, Any, Optional[torch.device]]] = []
        self.device_bytes = 0
        self.memory_bytes = 0
        self.disk_bytes = 0

    @property
    def budget_bytes(self) -> int:
        return self._host.limit

    @property
    def device_budget_bytes(self) -> Optional[int]:
        return self._device.limit

    def append(self, item: Tuple) -> None:
        size = _nbytes(item)
        device = _accelerator(item)
        if device is not None:
            if self._device.limit is None:
                self._device.limit = _default_device_budget(device)
            if self._device.take(size):
                self._items.append((False, item, None))
                self.device_bytes += size
                return
            item = _to(item, torch.device('cpu'))
        if self._host.take(size):
            self._items.append((False, item, device))
            self.memory_bytes += size
            return
        if self._dir is None:
            if self._spill_root:
                os.makedirs(self._spill_root, exist_ok=True)
            self._dir = tempfile.mkdtemp(prefix='mmq-acts-', dir=self._spill_root)
        path = os.path.join(self._dir, f'{len(self._items):06d}.pt')
        torch.save(item, path)
        self._items.append((True, path, device))
        self.disk_bytes += size

    def sibling(self) -> 'ActivationStore':
        """An empty store with the same spill folder that shares this store's budgets (the
        next block's inputs): what the two keep in memory counts against one budget."""
        return ActivationStore(spill_dir=self._spill_root, shared_with=self)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Tuple:
        on_disk, item, device = self._items[index]
        if on_disk:
            release_free_heap()  # what the previous spilled item and its pass left behind
            item = torch.load(item, weights_only=True)
        return item if device is None else _to(item, device)

    def __iter__(self) -> Iterator[Tuple]:
        for i in range(len(self)):
            yield self[i]

    @property
    def spilled(self) -> int:
        """How many items live on disk."""
        return sum(1 for on_disk, _, _ in self._items if on_disk)

    def close(self) -> None:
        """Drop every item and remove spilled files."""
        self._items.clear()
        self._host.release(self.memory_bytes)
        self._device.release(self.device_bytes)
        self.device_bytes = self.memory_bytes = self.disk_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class FirstOfItems(Sequence):
    """The first tensor of every item of a store (e.g. its image batches), each read only
    when indexed: a list of them would hold every spilled item in memory at once."""

    def __init__(self, store: ActivationStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            return [self.store[k][0] for k in range(*index.indices(len(self.store)))]
        return self.store[index][0]

    def __iter__(self) -> Iterator:
        for item in self.store:
            yield item[0]


class DetectorBatches(Sequence):
    """Preprocessed detector batches (``dict(inputs=..., data_samples=...)``) whose images
    live in a store, read one at a time: the batches keep only the rest (the data samples,
    a few KB), so the images count once, against the store's budget. A list of the whole
    batches held every image a second time, outside it (256 full-size images: 3.3 GB)."""

    def __init__(self, store: ActivationStore) -> None:
        self.store = store
        self._rest: List[dict] = []

    def append(self, batch: dict) -> None:
        """Keep ``batch`` but its ``inputs``, which must be the store's item at this index."""
        if len(self._rest) >= len(self.store):
            raise IndexError('append the batch\'s inputs to the store first.')
        self._rest.append({k: v for k, v in batch.items() if k != 'inputs'})

    def __len__(self) -> int:
        return len(self._rest)

    def __getitem__(self, index: int) -> dict:
        return dict(self._rest[index], inputs=self.store[index][0])
