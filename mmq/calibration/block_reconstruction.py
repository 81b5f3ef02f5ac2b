"""Block reconstruction (``methods.md`` 5): per block, in order, AdaRound weights, learned
activation scales and QDrop, minimising

    L = rec + round_weight * sum_i (1 - |2 h(V_i) - 1|^beta)

with ``rec`` the APH-weighted squared error ``(O_hat - O)^2 * H`` summed over the output's
dimension 1 and averaged over the rest (BRECQ / QDrop's ``lp_loss``), ``H`` the block output's
APH importance (RMS-normalised) and the regulariser summed over *every* rounding variable of
the block. At that balance the annealed regulariser drives every ``h(V)`` to 0 or 1 before the
rounding is hardened; the report gives the fraction that got there and the loss change that
hardening caused.

Inputs stream from :class:`ActivationStore` s (memory up to a budget, then disk): the
quantized chain's block inputs, the float chain's block inputs and the float block outputs.
"""
import math
import time
from typing import List, Sequence

import torch
from torch import Tensor, nn

from mmq.config.aphq_options import ReconstructOptions
from mmq.models.quant_conv import QuantConv2d
from mmq.models.quant_linear import QuantLinear
from mmq.models.transform import quantizers
from mmq.quantizers.adaround_quantizer import AdaRoundQuantizer
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.quantizers.log_quantizer import LogQuantizer
from mmq.quantizers.uniform_quantizer import UniformQuantizer
from .activation_store import ActivationStore
from .aph import importance_for
from .pass_planner import PassPlanner
from .units import Unit

EVAL_ITEMS = 8  # calibration items the before / after block loss is measured on


def _beta(it: int, opts: ReconstructOptions) -> float:
    """Annealed regulariser exponent; 0 means no regulariser yet (warm-up)."""
    warm = opts.warmup * opts.iters
    if it < warm:
        return 0.0
    frac = (it - warm) / max(1.0, opts.iters - warm)
    return opts.beta[1] + (opts.beta[0] - opts.beta[1]) * (1 - frac)


class _QDrop:
    """While active, every activation quantizer passes its float input with probability p."""

    def __init__(self, qs: Sequence[BaseQuantizer], p: float, generator: torch.Generator):
        self.qs, self.p, self.generator = qs, p, generator
        self.handles = []

    def __enter__(self):
        if self.p > 0:
            for q in self.qs:
                self.handles.append(q.register_forward_hook(self._hook))
        return self

    def _hook(self, module, args, out):
        x = args[0]
        keep_float = random_mask(x, self.p, self.generator)
        return torch.where(keep_float, module.float_path(x), out)

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def random_mask(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """``rand < p`` shaped like ``x``, drawn from the seeded ``generator`` (on its device)
    and moved to ``x``'s device."""
    return (torch.rand(x.shape, generator=generator, device=generator.device) < p).to(x.device)


def _weighted_loss(out: Tensor, target: Tensor, h) -> Tensor:
    """``(out - target)^2 * h`` summed over dimension 1, averaged over the rest (``h``: a map,
    :class:`ImportanceMaps` with one map per output shape, or ``None``: plain MSE)."""
    err = (out - target).pow(2)
    if h is not None:
        h = importance_for(h, out.shape[1:])
        err = err * (h if h.dim() == 1 else h.unsqueeze(0))
    return err.sum(1).mean() if err.dim() > 1 else err.mean()


def _tensors(state) -> List[Tensor]:
    """The tensors of a unit state or output (a block's tokens; every level of a neck)."""
    items = state if isinstance(state, (tuple, list)) else (state, )
    return [x for x in items if torch.is_tensor(x)]


def _output_loss(out, targets: Sequence[Tensor], h) -> Tensor:
    """:func:`_weighted_loss` summed over the output's tensors (one per pyramid level)."""
    outs = _tensors(out)
    if len(outs) != len(targets):
        raise ValueError(f'the unit gave {len(outs)} output tensors for {len(targets)} targets.')
    return sum(_weighted_loss(o, t, h) for o, t in zip(outs, targets))


def _eval_loss(unit: Unit, q_store: ActivationStore, out_store: ActivationStore, h) -> float:
    n = min(EVAL_ITEMS, len(q_store))
    with torch.no_grad():
        losses = [float(_output_loss(unit.run(q_store[i]), _tensors(out_store[i]), h))
                  for i in range(n)]
    return sum(losses) / max(1, n)


def _act_quantizers(unit: Unit) -> List[BaseQuantizer]:
    weights = {id(m.weight_quantizer) for m in unit.module.modules()
               if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quantizer is not None}
    return [q for q in quantizers(unit.module) if id(q) not in weights and bool(q.calibrated)]


def _learnable_scales(qs: List[BaseQuantizer], log_scales: bool = False) -> List[nn.Parameter]:
    """Turn the uniform activation scales (and, with ``log_scales``, the searched scales of
    the log quantizers that have one: post-GELU) into parameters; log bases stay searched."""
    params = []
    for q in qs:
        if isinstance(q, UniformQuantizer) or (log_scales and isinstance(q, LogQuantizer)
                                               and q.fixed_scale is None):
            value = q.scale.detach().clone()
            del q._buffers['scale']
            q.scale = nn.Parameter(value)
            params.append(q.scale)
    return params


def _freeze_scales(qs: List[BaseQuantizer]) -> None:
    for q in qs:
        if isinstance(getattr(q, 'scale', None), nn.Parameter):
            value = q.scale.detach().clone()
            del q._parameters['scale']
            q.register_buffer('scale', value)


def reconstruct_unit(unit: Unit, q_store: ActivationStore, fp_store: ActivationStore,
                     out_store: ActivationStore, h: Tensor, opts: ReconstructOptions,
                     generator: torch.Generator) -> dict:
    """Reconstruct one unit in place; returns its report (weighted loss before / after).

    If the trained block is worse than the calibrated one on the evaluation items (it can
    happen with very few iterations), the calibrated parameters are kept and the report says
    so.
    """
    start = time.perf_counter()
    layers = [m for m in unit.module.modules()
              if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quantizer is not None
              and bool(m.weight_quantizer.calibrated)]
    act_qs = _act_quantizers(unit)
    module = unit.module
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    was_training = module.training
    module.eval()  # no dropout / drop path; deployed (table) quantizer paths
    before = _eval_loss(unit, q_store, out_store, h)
    for q in quantizers(module):
        q.train()  # differentiable (exact STE) quantizer paths while training
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    rounders = {}
    for layer in layers:
        base = layer.weight_quantizer
        codes = None  # where the learned rounding starts: None = the float weight
        if opts.rounding_init == 'calibrated' and base.rounding.numel():
            with torch.no_grad():
                codes = base.quantize(layer.weight) - base.zero_point
        rounders[id(layer)] = (layer, base, AdaRoundQuantizer(base, layer.weight, codes))
        layer.weight_quantizer = rounders[id(layer)][2]
    scales = _learnable_scales(act_qs, opts.learn_log_scales)
    param_groups = [dict(params=[r.v for _, _, r in rounders.values()], lr=opts.round_lr)]
    if scales:
        param_groups.append(dict(params=scales, lr=opts.lr))
    optimizer = torch.optim.Adam(param_groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda it: 1.0, lambda it: 0.5 * (1 + math.cos(math.pi * it / opts.iters))]
        [:len(param_groups)])
    n = len(q_store)
    planner = PassPlanner(opts.pass_bytes)
    try:
        with torch.enable_grad(), _QDrop(act_qs, opts.drop_prob, generator):
            for it in range(opts.iters):
                idx = torch.randint(0, n, (min(opts.batch, n), ), generator=generator).tolist()
                # QDrop at the block input too: mix the quantized and float chains' inputs.
                inputs = []
                for i in idx:
                    xq, xf = q_store[i], fp_store[i]
                    mixed = tuple(
                        torch.where(random_mask(a, opts.drop_prob, generator), b, a)
                        if torch.is_tensor(a) else a for a, b in zip(xq, xf))
                    inputs.append(mixed + tuple(_tensors(out_store[i])))
                n_state = len(q_store[idx[0]])
                beta = _beta(it, opts)
                optimizer.zero_grad(set_to_none=True)
                # One backward per pass (gradients accumulate), so only one pass's graph is
                # alive at a time.
                for shape, group in planner.passes(inputs):
                    state, targets = group[:n_state], group[n_state:]
                    with planner.recording(shape):
                        loss = _output_loss(unit.run(state), targets, h)
                    (loss * (targets[0].shape[0] / len(idx))).backward()
                if beta > 0:
                    reg = sum(r.regulariser(beta) for _, _, r in rounders.values())
                    (opts.round_weight * reg).backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    for s in scales:
                        s.clamp_(min=1e-8)
        module.eval()
        settled = [r.settled() for _, _, r in rounders.values()]
        soft = _eval_loss(unit, q_store, out_store, h)  # before hardening the rounding
    finally:
        for layer, base, rounder in rounders.values():
            # The float weight stays (float mode is still the float model); the quantizer
            # remembers the learned rounding.
            base.set_rounding((rounder.v.detach() >= 0).float())
            layer.weight_quantizer = base
        _freeze_scales(act_qs)
        for p in frozen:
            p.requires_grad_(True)
        module.eval()  # measured as `before` was
    after = _eval_loss(unit, q_store, out_store, h)
    kept = after <= before
    if not kept:
        module.load_state_dict(saved)
    module.train(was_training)
    total_vars = sum(n for _, n in settled)
    return dict(unit=unit.name, seconds=time.perf_counter() - start, loss_before=before,
                loss_after=after if kept else before, loss_trained=after, loss_soft=soft,
                hardening_change=after - soft, reverted=not kept, layers=len(layers),
                learned_scales=len(scales),
                rounding_settled=sum(k for k, _ in settled) / max(1, total_vars),
                rounding_variables=total_vars,
                # Per input shape: items per pass, and bytes kept for backward by one item.
                items_per_pass={str(list(k)): planner.items(k) for k in planner.measured},
                backward_bytes_per_item={str(list(k)): v for k, v in planner.measured.items()})
