"""The 'reconstruct' stage: APH importance of every block output, then block reconstruction
in order, each block fed by the already reconstructed quantized blocks before it."""
import time
from typing import Callable, List, Optional

import torch
from torch import nn

from mmq.config.aphq_options import ReconstructOptions
from mmq.models.transform import set_quant_enabled
from mmq.utils import seeded_generator
from .activation_store import ActivationStore
from .aph import ImportanceMaps, aph_importance, aph_stats, rms_normalise
from .block_calibration import chain_outputs
from .block_reconstruction import reconstruct_unit
from .units import Unit, first_tensor


def aph_weighted(unit: Unit) -> bool:
    """Units whose one output tensor APH weighs (blocks, patch merging, patch embedding). A
    multi-output unit (the ViTDet pyramid, a ModuleList of levels) is reconstructed on the
    plain MSE of every level, as the published pipeline treats the FPN."""
    return not isinstance(unit.module, (nn.ModuleList, nn.ModuleDict))


def reconstruct_units(model: nn.Module, units: List[Unit], images: ActivationStore,
                      forward: Callable, task_loss: Callable, eps: float,
                      opts: ReconstructOptions, seed: int = 0, logger=None,
                      on_unit_done: Optional[Callable[[dict], None]] = None,
                      done: int = 0, fp_units: Optional[List[Unit]] = None) -> dict:
    """Reconstruct units ``done..`` of the chain in place (earlier ones are finished).

    ``images`` holds ``(image_batch,)`` items; it is left open for the caller.
    ``fp_units``: the unit chain of the float model the targets come from, when it is not
    ``units`` in float mode (after MLP Reconstruction: the original GELU model, so that
    reconstruction also absorbs MR's error); ``model``, ``forward`` and ``task_loss`` must
    then be that model's, for APH.
    """
    start = time.perf_counter()
    fp_units = units if fp_units is None else fp_units
    if [u.name for u in fp_units] != [u.name for u in units]:
        raise ValueError('the float reference model\'s units '
                         f'{[u.name for u in fp_units]} do not match the quantized model\'s '
                         f'{[u.name for u in units]}.')
    todo = [i for i, u in enumerate(units) if i >= done and aph_weighted(u)]
    t0 = time.perf_counter()
    batches = [images[k][0] for k in range(min(len(images), opts.aph_images or len(images)))]
    maps = aph_importance(forward, task_loss, batches, [fp_units[i].module for i in todo], eps,
                          model)
    hs = dict(zip(todo, maps))
    aph_seconds = time.perf_counter() - t0
    if logger is not None:
        logger.info(f'[mmq] APH importance of {len(todo)} block outputs in {aph_seconds:.1f} s')
    reports = []
    q_store = fp_store = images
    for i, unit in enumerate(units):
        fp_out = chain_outputs(fp_units[i], fp_store, quant=False)
        if i >= done:
            weighted = i in hs  # else plain MSE over every output (the ViTDet pyramid)
            h = hs.get(i)
            if isinstance(h, ImportanceMaps):
                h = h.normalised()  # one map per image shape
            elif h is not None:
                out_shape = first_tensor(fp_out[0]).shape[1:]
                if h.dim() > 1 and h.shape != out_shape:
                    # The module's output is not the unit's (e.g. a class token added after
                    # the patch embedding): keep the channel structure only.
                    h = h.reshape(-1, h.shape[-1]).mean(0)
                h = rms_normalise(h)
            generator = seeded_generator(seed, 'reconstruct', i)
            report = reconstruct_unit(unit, q_store, fp_store, fp_out, h, opts, generator)
            report.update(stage='reconstruct', index=i, objective='aph' if weighted else 'mse')
            if weighted:
                report['aph'] = aph_stats(hs[i])
            reports.append(report)
            if logger is not None:
                note = ' (kept calibrated: training did not help)' if report['reverted'] else ''
                kind = 'weighted loss' if weighted else 'MSE'
                logger.info(f"[mmq] reconstruct {i + 1}/{len(units)} {unit.name}: {kind} "
                            f"{report['loss_before']:.4g} -> {report['loss_after']:.4g}, "
                            f"{report['seconds']:.1f} s{note}")
            if on_unit_done is not None:
                on_unit_done(report)
        if fp_store is not images:
            fp_store.close()  # before the quantized outputs: one store less on disk at a time
        q_out = chain_outputs(unit, q_store, quant=True)
        if q_store is not images:
            q_store.close()
        q_store, fp_store = q_out, fp_out
    for s in (q_store, fp_store):
        if s is not images:
            s.close()
    return dict(stage='reconstruct', seconds=time.perf_counter() - start,
                aph_seconds=aph_seconds, units=reports)


def reconstruct_neck(model: nn.Module, fp_model: nn.Module, images: ActivationStore,
                     opts: ReconstructOptions, seed: int = 0, logger=None) -> dict:
    """Reconstruct a detector's neck (``scope='detector'``), as the published detection
    pipeline does after the backbone blocks: AdaRound, learned activation scales and QDrop on
    the plain MSE of every pyramid level against the float neck's outputs, fed by the
    quantized (and, for QDrop, the float) backbone's outputs.

    ``fp_model``: the float model the targets come from (``model`` itself in float mode, or
    the original model kept from before MR).
    """
    neck = model.neck
    q_in, fp_in, targets = images.sibling(), images.sibling(), images.sibling()
    try:
        with torch.no_grad():
            for (img, ) in images:
                q_in.append(tuple(model.backbone(img)))
                set_quant_enabled(fp_model, False)
                try:
                    feats = tuple(fp_model.backbone(img))
                    fp_in.append(feats)
                    targets.append(tuple(fp_model.neck(feats)))
                finally:
                    set_quant_enabled(fp_model, True)
        unit = Unit('neck', neck, lambda s: tuple(neck(tuple(s))))
        generator = seeded_generator(seed, 'reconstruct_neck')
        report = reconstruct_unit(unit, q_in, fp_in, targets, None, opts, generator)
    finally:
        for s in (q_in, fp_in, targets):
            s.close()
    report.update(stage='reconstruct', index=-3)
    if logger is not None:
        note = ' (kept calibrated: training did not help)' if report['reverted'] else ''
        logger.info(f"[mmq] reconstruct neck: MSE {report['loss_before']:.4g} -> "
                    f"{report['loss_after']:.4g}, {report['seconds']:.1f} s{note}")
    return report
