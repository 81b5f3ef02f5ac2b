"""APH: Average Perturbation Hessian importance (``methods.md`` 5).

For a module output ``O``: add ``+eps`` to every element, run the rest of the float model,
take ``g+ = dL/dO`` of the task loss between the float prediction and the perturbed one;
repeat with ``-eps``. ``|g+ - g-| / (2 eps)`` is a finite-difference Hessian-times-ones
(exact for a quadratic loss), averaged over calibration samples with its token and channel
structure kept. (The published formula omits ``1 / (2 eps)``: a constant factor, removed by
the RMS normalisation every consumer applies.)
"""
from typing import Callable, Dict, Iterable, List, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.models.transform import set_quant_enabled
from .units import first_tensor, is_detector


def _add_to_output(out, delta: Tensor):
    if torch.is_tensor(out):
        return out + delta
    items = list(out)
    i = next(k for k, x in enumerate(items) if torch.is_tensor(x))
    items[i] = items[i] + delta
    return type(out)(items) if isinstance(out, tuple) else items


class ImportanceMaps:
    """APH maps of one module output for samples of several shapes (images of different
    sizes): each shape keeps its own token x channel map, averaged over the samples of that
    shape; an output of a shape no sample had gets the channel profile of all of them."""

    def __init__(self, maps: Dict[tuple, Tensor], counts: Dict[tuple, int]) -> None:
        self.maps, self.counts = maps, counts

    def for_output(self, shape) -> Tensor:
        return self.maps.get(tuple(shape), self.channel_mean())

    def channel_mean(self) -> Tensor:
        total = sum(m.reshape(-1, m.shape[-1]).mean(0) * self.counts[k]
                    for k, m in self.maps.items())
        return total / sum(self.counts.values())

    def normalised(self) -> 'ImportanceMaps':
        """Every map divided by one RMS over all of them (their relative scale is kept)."""
        flat = self.flatten().double()
        peak = flat.abs().max()
        if not torch.isfinite(peak):
            raise ValueError('the APH importance is not finite: the task loss or model '
                             'produces NaN/Inf under the perturbation.')
        if float(peak) == 0.0:
            return ImportanceMaps({k: torch.ones_like(m) for k, m in self.maps.items()},
                                  self.counts)
        rms = (flat / peak).pow(2).mean().sqrt() * peak
        return ImportanceMaps({k: (m.double() / rms).to(m.dtype) for k, m in self.maps.items()},
                              self.counts)

    def flatten(self) -> Tensor:
        return torch.cat([m.flatten() for m in self.maps.values()])


def importance_for(h, shape) -> Tensor:
    """The importance map (tensor or :class:`ImportanceMaps`) of an output of ``shape``
    (without the batch axis)."""
    return h.for_output(shape) if isinstance(h, ImportanceMaps) else h


class _Accumulator:
    """Mean over samples of per-sample maps, one per sample shape."""

    def __init__(self) -> None:
        self.totals: Dict[tuple, Tensor] = {}
        self.counts: Dict[tuple, int] = {}

    def add(self, h: Tensor) -> None:  # h: (B, ..., C)
        h = h.detach()
        key = tuple(h.shape[1:])
        s = h.sum(0)
        self.totals[key] = self.totals[key] + s if key in self.totals else s
        self.counts[key] = self.counts.get(key, 0) + h.shape[0]

    def mean(self):
        maps = {k: t / self.counts[k] for k, t in self.totals.items()}
        if len(maps) == 1:
            return next(iter(maps.values()))
        return ImportanceMaps(maps, dict(self.counts))


def rpn_task_loss(fp_out, out, objectness_thr: float = 0.7) -> Tensor:
    """The published detection task loss at the RPN outputs: binary KL on objectness plus
    smooth-L1 on the deltas of anchors the float model finds confident (objectness > 0.7),
    each term divided by its own detached value."""
    (fp_cls, fp_reg), (cls, reg) = fp_out, out
    kl, l1 = 0.0, 0.0
    for fc, fr, c, r in zip(fp_cls, fp_reg, cls, reg):
        # float64: for an eps-sized perturbation the KL is O(eps^2), below float32 rounding
        # of its O(1) terms, and each term is divided by its own value below.
        fc, fr, c, r = fc.double(), fr.double(), c.double(), r.double()
        p = torch.sigmoid(fc)
        # KL(Bernoulli(p) || Bernoulli(sigmoid(c))), from logits for stability.
        kl = kl + (p * (F.logsigmoid(fc) - F.logsigmoid(c)) +
                   (1 - p) * (F.logsigmoid(-fc) - F.logsigmoid(-c))).sum()
        num_anchors = fc.shape[1]
        keep = (p > objectness_thr)
        if keep.any():
            b, _, h, w = fr.shape
            keep4 = keep.unsqueeze(2).expand(b, num_anchors, 4, h, w).reshape(fr.shape)
            l1 = l1 + F.smooth_l1_loss(r[keep4], fr[keep4], reduction='sum')
    loss = kl / kl.detach().clamp_min(1e-30)
    if torch.is_tensor(l1):
        loss = loss + l1 / l1.detach().clamp_min(1e-30)
    return loss


def kl_task_loss(fp_logits: Tensor, logits: Tensor, temperature: float = 20.0) -> Tensor:
    """Classification task loss ``KL(softmax(z_fp / T) || softmax(z / T))`` (in float64: it
    is O(eps^2) for an eps perturbation)."""
    p = F.log_softmax(fp_logits.double() / temperature, -1)
    q = F.log_softmax(logits.double() / temperature, -1)
    return (p.exp() * (p - q)).sum(-1).mean()


def detector_rpn_forward(detector: nn.Module) -> Callable[[Tensor], tuple]:
    """Image batch -> the detector's RPN outputs (the APH task-loss input)."""
    if not hasattr(detector, 'rpn_head'):
        raise TypeError(f'{type(detector).__name__} has no rpn_head: the APH detection task '
                        'loss is taken at RPN outputs (two-stage detectors: Mask R-CNN, '
                        'Cascade Mask R-CNN).')
    return lambda img: detector.rpn_head(detector.extract_feat(img))


def task_for(model: nn.Module, eps: float = None):
    """(forward, task loss, eps) of a detector (RPN loss, eps 1e-3) or a timm classifier
    (KL at T = 20, eps 1e-6)."""
    if is_detector(model):
        return detector_rpn_forward(model), rpn_task_loss, 1e-3 if eps is None else eps
    return model, kl_task_loss, 1e-6 if eps is None else eps


def aph_importance(forward: Callable[[Tensor], object], task_loss: Callable, images: Iterable,
                   modules: Sequence[nn.Module], eps: float,
                   model: nn.Module = None) -> List[Tensor]:
    """Average Perturbation Hessian of each module's output (first tensor of it).

    Args:
        forward: Image batch -> prediction of the float model.
        task_loss: ``(float prediction, perturbed prediction) -> scalar``.
        images: Image batches (tensors).
        modules: Modules whose outputs are perturbed (one at a time).
        eps: The perturbation.
        model: The model whose quantizers are switched off and whose parameters are frozen
            for the duration (no gradient is accumulated into them).

    Returns:
        One map per module shaped like its output without the batch axis (mean over samples),
        or, when samples differ in shape, an :class:`ImportanceMaps` with one such map per
        shape.
    """
    if eps <= 0:
        raise ValueError(f'eps={eps} must be positive.')
    acc = [_Accumulator() for _ in modules]
    owner = model if model is not None else nn.ModuleList(modules)
    params = [p for p in owner.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    set_quant_enabled(owner, False)
    try:
        for img in images:
            with torch.no_grad():
                ref = forward(img)
            for k, module in enumerate(modules):
                grads = []
                for sign in (1.0, -1.0):
                    holder = {}

                    def hook(mod, args, out, sign=sign, holder=holder):
                        t = first_tensor(out)
                        delta = torch.zeros_like(t, requires_grad=True)
                        holder['delta'] = delta
                        return _add_to_output(out, delta + sign * eps)

                    handle = module.register_forward_hook(hook)
                    try:
                        with torch.enable_grad():
                            loss = task_loss(ref, forward(img))
                            grads.append(torch.autograd.grad(loss, holder['delta'])[0])
                    finally:
                        handle.remove()
                acc[k].add((grads[0] - grads[1]).abs() / (2 * eps))
    finally:
        set_quant_enabled(owner, True)
        for p in params:
            p.requires_grad_(True)
    return [a.mean() for a in acc]


def rms_normalise(h: Tensor) -> Tensor:
    """``h / sqrt(mean(h^2))`` (all ones when ``h`` is zero everywhere), overflow-safe."""
    dtype = h.dtype
    h = h.double()
    peak = h.abs().max()
    if not torch.isfinite(peak) or float(peak) == 0.0:
        if not torch.isfinite(peak):
            raise ValueError('the APH importance is not finite: the task loss or model '
                             'produces NaN/Inf under the perturbation.')
        return torch.ones_like(h, dtype=dtype)
    h = h / peak
    return (h / h.pow(2).mean().sqrt()).to(dtype)


def aph_stats(h) -> Dict[str, float]:
    """Summary of an importance map (or :class:`ImportanceMaps`) for the report."""
    flat = h.flatten().float()
    shape = ([list(k) for k in h.maps] if isinstance(h, ImportanceMaps) else list(h.shape))
    return dict(shape=shape, mean=float(flat.mean()), max=float(flat.max()),
                p99_over_median=float(flat.quantile(0.99) / flat.median().clamp_min(1e-30))
                if flat.numel() <= 2**24 else float('nan'))
