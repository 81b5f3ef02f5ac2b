"""A generic beam search over quantizer parameters, the engine of FPCS.

Candidates are ``(groups, K, P)`` tensors: ``groups`` independent searches (one per output
channel, per head, or a single one per tensor) each scoring ``K`` parameter vectors of length
``P`` (e.g. ``(scale, zero_point)`` or ``(q, scale)``). The caller supplies the scoring
callback and, per step, an expansion that turns the surviving beam into new candidates; the
search knows nothing about what the parameters mean, so one implementation serves Linear,
Conv and MatMul operands alike.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]  # (groups, K, P) -> (groups, K) losses
ExpandFn = Callable[[Tensor, int], Tensor]  # beam (groups, W, P), step -> (groups, K, P)


@dataclass
class BeamStep:
    """One step: expand the beam (``None`` for the first step) and keep the best ``keep``."""
    keep: int
    expand: Optional[ExpandFn] = None


@dataclass
class SearchResult:
    """Best parameters ``(groups, P)``, their losses ``(groups,)``, and the number of candidate
    evaluations per group the search spent."""
    params: Tensor
    loss: Tensor
    evaluations: int


def score_in_chunks(score: ScoreFn, candidates: Tensor, chunk: int) -> Tensor:
    """Score ``candidates`` ``chunk`` at a time along K, so memory stays bounded."""
    if chunk < 1:
        raise ValueError(f'chunk={chunk} must be >= 1.')
    parts = [score(c) for c in candidates.split(chunk, dim=1)]
    losses = torch.cat(parts, dim=1)
    if losses.shape != candidates.shape[:2]:
        raise ValueError(f'score returned shape {tuple(losses.shape)}, expected '
                         f'{tuple(candidates.shape[:2])} (groups, K).')
    return losses


def _top(candidates: Tensor, losses: Tensor, keep: int):
    keep = min(keep, candidates.shape[1])
    # NaN losses (a degenerate candidate) never win.
    losses = torch.nan_to_num(losses, nan=float('inf'))
    best, idx = losses.topk(keep, dim=1, largest=False)
    beam = candidates.gather(1, idx.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))
    return beam, best


def beam_search(initial: Tensor, score: ScoreFn, steps: Sequence[BeamStep],
                chunk: int = 16) -> SearchResult:
    """Run the steps; each later step's survivors are chosen among its children *and* the
    previous beam (whose losses are known), so the best loss never increases."""
    if initial.dim() != 3:
        raise ValueError(f'initial candidates must be (groups, K, P), got {tuple(initial.shape)}.')
    if not steps or steps[0].expand is not None:
        raise ValueError('the first step scores the initial candidates: give it no expand.')
    beam: Optional[Tensor] = None
    beam_loss: Optional[Tensor] = None
    evaluations = 0
    for i, step in enumerate(steps):
        if i == 0:
            candidates = initial
        else:
            if step.expand is None:
                raise ValueError(f'step {i} needs an expand function.')
            candidates = step.expand(beam, i)
        losses = score_in_chunks(score, candidates, chunk)
        evaluations += candidates.shape[1]
        if beam is not None:
            candidates = torch.cat([beam, candidates], dim=1)
            losses = torch.cat([beam_loss, losses], dim=1)
        beam, beam_loss = _top(candidates, losses, step.keep)
    return SearchResult(params=beam[:, 0], loss=beam_loss[:, 0], evaluations=evaluations)


def grid_search(candidates: Tensor, score: ScoreFn, chunk: int = 16) -> SearchResult:
    """Exhaustive search: score every candidate, keep the best (the baseline FPCS beats)."""
    return beam_search(candidates, score, [BeamStep(keep=1)], chunk)


def chunk_for(elements_per_candidate: int, budget: int = 2**24) -> int:
    """How many candidates fit a budget of ``budget`` float elements at once."""
    return max(1, budget // max(1, elements_per_candidate))


def stack_params(*columns: Tensor) -> Tensor:
    """Stack ``(groups, K)`` tensors into ``(groups, K, P)``."""
    return torch.stack(columns, dim=-1)


def spread(center: Tensor, width: Tensor, n: int) -> Tensor:
    """``n`` values ``center + (linspace(0, 1, n) - 0.5) * width`` per entry: ``(..., n)``."""
    offsets = torch.linspace(0, 1, n, dtype=center.dtype, device=center.device) - 0.5
    return center.unsqueeze(-1) + offsets * width.unsqueeze(-1)


def repeat_each(x: Tensor, n: int) -> Tensor:
    """``(groups, W)`` -> ``(groups, W * n)``, each entry repeated ``n`` times."""
    return x.repeat_interleave(n, dim=1)


__all__: List[str] = [
    'BeamStep', 'SearchResult', 'beam_search', 'grid_search', 'score_in_chunks', 'chunk_for',
    'stack_params', 'spread', 'repeat_each'
]
