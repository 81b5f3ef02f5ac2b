"""MR: MLP Reconstruction (``methods.md`` 6).

GELU becomes ReLU in every MLP; fc1 and fc2 of each block are trained so the ReLU MLP
reproduces the float GELU MLP on the float model's MLP inputs, weighted by the APH
importance of the MLP output::

    L = mean_rows sum_c (MLP_relu(x) - O_gelu)^2 H + 2 mean_rows sum_c (fc2(clamp(relu(fc1 x),
        0, ub)) - O_gelu)^2 H

Afterwards fc2's input is non-negative and is quantized uniformly with zero point 0 (the
transform gives post-ReLU inputs that quantizer).
"""
import math
import time
from typing import Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.config.aphq_options import MROptions
from mmq.models.adapters import MLPParts, find_mlps
from mmq.quantizers.objectives import sqnr_db
from mmq.utils import seeded_generator
from .aph import ImportanceMaps, aph_importance, aph_stats, rms_normalise


def apply_relu(model: nn.Module) -> int:
    """Replace the activation of every MLP by ReLU (the structure MR produces)."""
    mlps = find_mlps(model)
    for mlp in mlps:
        mlp.set_act(nn.ReLU())
    return len(mlps)


def _capture_mlp_inputs(mlps: List[MLPParts], forward: Callable, images: Sequence[Tensor],
                        rows: int, generator: torch.Generator):
    """Seeded token rows of every MLP's input, with each row's token position.

    The rows go into buffers allocated once, at the first image: kept as one small tensor per
    image and MLP, they pinned the C heap between each pass's large temporaries (glibc then
    serves those from the heap): over 1024 ViT-S images the process grew by 8.5 GB for
    0.3 GB of rows, against 0.3 GB with the buffers (``benchmarks/mr_capture_memory.py``).
    """
    per_image = max(1, math.ceil(rows / len(images)))  # per item (batch) of ``images``
    bufs: Dict[int, list] = {}  # id(module) -> [rows, positions, filled]

    def hook(module, args):
        x = args[0].detach()
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        flat = tokens.reshape(-1, x.shape[-1])
        idx = torch.randperm(flat.shape[0], generator=generator)[:per_image]
        if id(module) not in bufs:
            size = per_image * len(images)
            bufs[id(module)] = [flat.new_empty(size, flat.shape[1]),
                                torch.empty(size, dtype=torch.long), 0]
        buf = bufs[id(module)]
        k = idx.numel()  # at most per_image: the buffers hold every image's rows
        torch.index_select(flat, 0, idx, out=buf[0][buf[2]:buf[2] + k])
        torch.remainder(idx, tokens.shape[1], out=buf[1][buf[2]:buf[2] + k])
        buf[2] += k

    handles = [m.module.register_forward_pre_hook(hook) for m in mlps]
    try:
        with torch.no_grad():
            for img in images:
                forward(img)
    finally:
        for h in handles:
            h.remove()
    filled = [bufs[id(m.module)] for m in mlps]
    return [(x[:n], pos[:n]) for x, pos, n in filled]


def _mr_loss(mlp: MLPParts, x: Tensor, target: Tensor, h: Tensor, ub: float,
             clamp_weight: float) -> Tensor:
    direct = ((mlp.forward(x, F.relu) - target).pow(2) * h).sum(-1).mean()
    clamped = ((mlp.forward(x, F.relu, ub) - target).pow(2) * h).sum(-1).mean()
    return direct + clamp_weight * clamped


@torch.no_grad()
def _fit_fc2(mlp: MLPParts, pre: Tensor, target: Tensor, ridge: float = 1e-4) -> None:
    """fc2 <- the ridge least-squares fit of ``target`` on the ReLU hidden rows ``relu(pre)``
    (``pre``: fc1's output; a start for training that already absorbs the mean GELU / ReLU
    difference)."""
    hidden = F.relu(pre).double()
    feats = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], 1)
    gram = feats.T @ feats
    gram.diagonal().add_(ridge * float(gram.diagonal().mean()))
    sol = torch.linalg.solve(gram, feats.T @ target.double())  # (hidden + 1, out)
    mlp.fc2.weight.copy_(sol[:-1].T.to(mlp.fc2.weight.dtype))
    if mlp.fc2.bias is not None:
        mlp.fc2.bias.copy_(sol[-1].to(mlp.fc2.bias.dtype))


def _flat_outputs(out) -> Tensor:
    if torch.is_tensor(out):
        return out.flatten()
    return torch.cat([_flat_outputs(o) for o in out if torch.is_tensor(o) or
                      isinstance(o, (list, tuple))])


def mlp_reconstruction(model: nn.Module, backbone: nn.Module, forward: Callable,
                       task_loss: Callable, eps: float, images: Sequence[Tensor], opts: MROptions,
                       seed: int = 0, logger=None, checkpoints: int = 10) -> dict:
    """Run MR on the float ``model`` in place (GELU -> ReLU, fc1 / fc2 trained per MLP).

    Args:
        model: The float model (detector or classifier) ``forward`` runs.
        backbone: The part whose MLPs are reconstructed.
        forward, task_loss, eps: The APH task (see :func:`mmq.calibration.aph.task_for`).
        images: Calibration image batches (a sequence read in order: e.g.
            :class:`FirstOfItems` of the calibration's store).
        opts: Iterations, batch, rows, learning rate, percentile.
        checkpoints: How often (evenly over the iterations) the full-sample loss is logged.

    Returns:
        The stage report: per MLP the loss at each checkpoint, ``ub``, APH statistics, time;
        and the SQNR of the model's outputs after MR against before.
    """
    start = time.perf_counter()
    mlps = find_mlps(backbone)
    if not mlps:
        raise ValueError(f'{type(backbone).__name__} has no GELU MLP (mmcv FFN / timm Mlp) '
                         "for MR: remove 'mr' from quant_cfg.stages.")
    if any(not isinstance(m.act, nn.GELU) for m in mlps):
        raise ValueError("MR expects GELU MLPs, but some activation is not GELU (was 'mr' "
                         'already applied?).')
    generator = seeded_generator(seed, 'mr')
    model.eval()
    with torch.no_grad():
        reference = [_flat_outputs(forward(img)) for img in images[:2]]
    samples = _capture_mlp_inputs(mlps, forward, images, opts.rows, generator)
    hs = aph_importance(forward, task_loss, images[:opts.aph_images], [m.module for m in mlps],
                        eps, model)
    for m in mlps:
        m.set_act(nn.ReLU())
    reports = []
    for k, (mlp, (x, pos), h) in enumerate(zip(mlps, samples, hs)):
        t0 = time.perf_counter()
        if isinstance(h, ImportanceMaps):  # rows of images of several sizes: channels only
            h = h.channel_mean()
        h_rows = rms_normalise(h)
        h_rows = h_rows[pos] if h_rows.dim() == 2 else h_rows.expand(x.shape[0], -1)
        with torch.no_grad():
            pre = mlp.fc1(x)
            gelu_out = F.gelu(pre)
            target = mlp.fc2(gelu_out)
            pos_vals = gelu_out[gelu_out > 0]
            if pos_vals.numel() > 2**22:
                pos_vals = pos_vals[torch.randperm(pos_vals.numel(), generator=generator)[:2**22]]
            ub = float(pos_vals.quantile(opts.percentile)) if pos_vals.numel() else 0.0
            if opts.fc2_init == 'lstsq':
                _fit_fc2(mlp, pre, target)
        params = [p for lin in (mlp.fc1, mlp.fc2) for p in lin.parameters()]
        optimizer = torch.optim.Adam(params, lr=opts.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, opts.iters)
        every = max(1, opts.iters // checkpoints)

        def full_loss() -> float:
            with torch.no_grad():
                return float(_mr_loss(mlp, x, target, h_rows, ub, opts.clamp_weight))

        curve = [full_loss()]
        # Keep the best weights seen at a checkpoint (the start included): Adam steps from a
        # least-squares start can raise the loss, and a stage must not leave it worse.
        best, best_at, best_state = curve[0], 0, [p.detach().clone() for p in params]
        was_trainable = [p.requires_grad for p in params]
        for p in params:  # a frozen backbone (frozen_blocks) is trained here all the same
            p.requires_grad_(True)
        with torch.enable_grad():
            for it in range(opts.iters):
                idx = torch.randint(0, x.shape[0], (min(opts.batch, x.shape[0]), ),
                                    generator=generator)
                loss = _mr_loss(mlp, x[idx], target[idx], h_rows[idx], ub, opts.clamp_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if (it + 1) % every == 0 or it + 1 == opts.iters:
                    curve.append(full_loss())
                    if curve[-1] < best:
                        best, best_at = curve[-1], it + 1
                        best_state = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, kept in zip(params, best_state):
                p.copy_(kept)
        for p, trainable in zip(params, was_trainable):
            p.grad = None
            p.requires_grad_(trainable)
        reports.append(dict(mlp=k, ub=ub, loss_start=curve[0], loss_end=best,
                            loss_last=curve[-1], kept_step=best_at, loss_curve=curve,
                            aph=aph_stats(h), seconds=time.perf_counter() - t0))
        if logger is not None:
            kept = '' if best_at == opts.iters else f' (kept step {best_at}: last {curve[-1]:.4g})'
            logger.info(f'[mmq] MR {k + 1}/{len(mlps)}: weighted loss {curve[0]:.4g} -> '
                        f'{best:.4g}{kept}, ub {ub:.3g}, {reports[-1]["seconds"]:.1f} s')
    with torch.no_grad():
        after = [_flat_outputs(forward(img)) for img in images[:2]]
    drift = sum(sqnr_db(r, a) for r, a in zip(reference, after)) / len(reference)
    if logger is not None:
        logger.info(f'[mmq] MR done in {time.perf_counter() - start:.1f} s: model output '
                    f'SQNR after vs before MR {drift:.2f} dB')
    return dict(stage='mr', seconds=time.perf_counter() - start, mlps=reports,
                output_sqnr_db=drift)
