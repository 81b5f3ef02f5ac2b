"""Forward / backward passes of a reconstruction step sized by the memory autograd keeps:
:class:`PassPlanner`."""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .units import first_tensor


def _cat(states: List[tuple]) -> tuple:
    """States of equal shapes concatenated along the batch axis."""
    return tuple(torch.cat([g[i] for g in states]) if torch.is_tensor(x) else x
                 for i, x in enumerate(states[0]))


class PassPlanner:
    """Splits a step's items into forward / backward passes whose tensors kept for backward
    stay within ``budget`` bytes (``None``: one pass per input shape).

    Items of one input shape share a pass (they concatenate). The first pass of a shape runs
    one item and measures what autograd keeps (each storage counted once); later passes of
    that shape take ``budget // measured`` items (at least one). Attention that is quadratic
    in the tokens (global ViT blocks at detection sizes) is measured, not estimated.
    """

    def __init__(self, budget: Optional[int]) -> None:
        self.budget = budget
        self.measured: Dict[tuple, int] = {}  # bytes kept for backward by one item, by shape

    def items(self, shape: tuple) -> int:
        """Items per pass of input ``shape`` (one until it is measured)."""
        if shape not in self.measured:
            return 1
        return max(1, self.budget // max(1, self.measured[shape]))

    def passes(self, states: List[tuple]) -> Iterator[Tuple[tuple, tuple]]:
        """``(shape, concatenated states)`` of each pass, in order."""
        groups: Dict[tuple, List[tuple]] = {}
        for s in states:
            groups.setdefault(tuple(first_tensor(s).shape[1:]), []).append(s)
        for shape, group in groups.items():
            k = 0
            while k < len(group):
                size = len(group) if self.budget is None else self.items(shape)
                yield shape, _cat(group[k:k + size])
                k += size

    @contextmanager
    def recording(self, shape: tuple):
        """Around a pass's forward: measures it if it is its shape's first."""
        if self.budget is None or shape in self.measured:
            yield
            return
        seen, total = set(), [0]

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total[0] += storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self.measured[shape] = total[0]
