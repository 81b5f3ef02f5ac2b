"""``mmq.quantize``: the library call behind the calibration hook, usable without a Runner.

Stages (``quant_cfg.stages``, in order): 'mr' (MLP Reconstruction on the float model),
'calibrate' (FPCS / MinMax / percentile, block by block), 'reconstruct' (APH-weighted block
reconstruction). A ``resume`` state skips the stages it has finished and continues the one
it was in at its first unfinished block.
"""
import copy
import time
from typing import Callable, Iterable, List, Optional, Union

import torch
from torch import nn

from mmq.config.quant_config import QuantConfig
from mmq.models.transform import count_quant_layers, quantize_modules, quantizers
from mmq.quantizers.validation import check_finite
from .activation_store import ActivationStore, DetectorBatches
from .mlp_reconstruction import apply_relu
from .stages import (StageRun, check_box_head, quant_target, run_calibrate, run_mr,
                     run_reconstruct)
from .units import build_units, is_detector

STAGE_FIELDS = ('stages', 'mr', 'reconstruct')


def prepare(model: nn.Module, quant_cfg: Union[dict, QuantConfig]) -> QuantConfig:
    """Check the backbone is supported and swap modules (no calibration). A config with the
    'mr' stage gets ReLU MLPs first (the structure MR leaves behind)."""
    qcfg = quant_cfg if isinstance(quant_cfg, QuantConfig) else QuantConfig.from_dict(quant_cfg)
    backbone = model.backbone if is_detector(model) else model
    build_units(backbone)  # raises a clear error for unsupported backbones
    if 'mr' in qcfg.stages:
        apply_relu(backbone)
    quantize_modules(quant_target(model, qcfg), qcfg)
    return qcfg


def check_resumable(saved: QuantConfig, qcfg: QuantConfig, stages_done: List[str]) -> None:
    """A saved state can seed a run whose config agrees on everything its finished stages
    used and whose stages start with the finished ones."""
    if list(stages_done) != qcfg.stages[:len(stages_done)]:
        raise ValueError(f'the saved state finished stages {list(stages_done)}, which do not '
                         f'start this run\'s stages {qcfg.stages}; delete it or change '
                         'quant_cfg.stages.')
    a, b = saved.to_dict(), qcfg.to_dict()
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and k not in STAGE_FIELDS}
    for stage in ('mr', 'reconstruct'):
        if stage in stages_done and a[stage] != b[stage]:
            diff[stage] = (a[stage], b[stage])
    if diff:
        raise ValueError(f'the saved state was made with another quant_cfg (saved, now): {diff}; '
                         'delete it to start over.')


def _resume_progress(resume: Optional[dict], qcfg: QuantConfig, logger) -> tuple:
    """(stages done, stage in progress, units done in it, reports so far)."""
    if resume is None:
        return [], None, 0, []
    stages_done = list(resume.get('stages_done', []))
    stage = resume.get('stage', 'calibrate')
    check_resumable(QuantConfig.from_dict(resume['quant_cfg']), qcfg, stages_done)
    units_done = int(resume.get('units_done', 0))
    if logger is not None:
        logger.info(f'[mmq] resuming: stages done {stages_done}, {stage} after unit '
                    f'{units_done}')
    return stages_done, stage, units_done, list(resume.get('reports', []))


def _collect_images(model: nn.Module, data: Iterable, store: ActivationStore,
                    keep_batches: bool) -> DetectorBatches:
    """Every calibration image into ``store``; with ``keep_batches``, also the preprocessed
    detector batches, for the neck / heads (``scope='detector'``), their images read back
    from the store."""
    batches = DetectorBatches(store)
    detector = is_detector(model)
    for batch in data:
        if detector:
            batch = model.data_preprocessor(batch, False)
            inputs = batch['inputs']
        else:
            inputs = batch
        check_finite(inputs, 'calibration image batch')
        store.append((inputs, ))
        if keep_batches and detector:
            batches.append(batch)
    if len(store) == 0:
        raise ValueError('the calibration set is empty: give at least one image (check the '
                         'calibration dataset path / ann_file and num_images).')
    return batches


@torch.no_grad()
def quantize(model: nn.Module,
             data: Iterable,
             quant_cfg: Union[dict, QuantConfig],
             *,
             logger=None,
             activation_budget_bytes: int = 2 * 1024**3,
             spill_dir: Optional[str] = None,
             on_unit_done: Optional[Callable[[dict], None]] = None,
             resume: Optional[dict] = None,
             on_stage_done: Optional[Callable[[str, List[str], dict], None]] = None) -> dict:
    """Quantize ``model`` in place and run the configured stages on ``data``; returns the report.

    Args:
        model: An mmdet detector (its backbone is calibrated block by block) or a bare
            backbone / timm ``VisionTransformer``.
        data: For a detector, batches as its dataloader yields them (passed through
            ``model.data_preprocessor``); otherwise image tensors ``(B, 3, H, W)``.
        quant_cfg: :class:`QuantConfig` or its dict.
        logger: An mmengine ``MMLogger`` (or anything with ``.info``) for progress.
        activation_budget_bytes: Activations kept in memory, all together (images, block
            inputs and outputs, reconstruction targets); the rest spill to disk.
        spill_dir: Folder for spilled activations (a temporary one by default).
        on_unit_done: Called with each finished unit's report (``report['stage']`` says which
            stage; MR reports once, as a whole).
        resume: A partial state (as :func:`mmq.calibration.save_partial_state` writes) to
            continue from: finished stages and units are not run again.
        on_stage_done: Called as ``(stage, stages_done, stage_report)`` after each stage.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f'mmq.quantize needs the model (an nn.Module), got '
                        f'{type(model).__name__} (note: mmdet backbones such as '
                        'SwinTransformer return None from .eval() / .train()).')
    qcfg = quant_cfg if isinstance(quant_cfg, QuantConfig) else QuantConfig.from_dict(quant_cfg)
    detector = is_detector(model)
    backbone = model.backbone if detector else model
    build_units(backbone)  # a clear error for unsupported backbones, before any work
    check_box_head(model, qcfg)
    stages_done, resume_stage, units_done, reports = _resume_progress(resume, qcfg, logger)
    was_training = model.training
    model.eval()
    reference = None
    if ('mr' in qcfg.stages and 'reconstruct' in qcfg.stages
            and 'reconstruct' not in stages_done):
        # MR changes the float model (GELU -> ReLU, new fc1 / fc2): reconstruction's targets
        # and APH come from the original float model, as published.
        reference = copy.deepcopy(model)
    store = ActivationStore(activation_budget_bytes, spill_dir)
    batches = _collect_images(model, data, store, qcfg.scope == 'detector')
    num_images = sum(item[0].shape[0] for item in store)
    if logger is not None:
        logger.info(f'[mmq] {qcfg.stages} on {type(backbone).__name__}, {num_images} images '
                    f'({qcfg.calibrator}, W{qcfg.w_bits}A{qcfg.a_bits}, softmax={qcfg.softmax},'
                    f' gelu={qcfg.gelu})')
    run = StageRun(model, backbone, detector, qcfg, store, batches, logger, on_unit_done,
                   reports, resume_stage, units_done, reference)
    stage_reports = {}

    def finish(stage: str, stage_report: dict) -> None:
        stages_done.append(stage)
        stage_reports[stage] = stage_report
        if on_stage_done is not None:
            on_stage_done(stage, list(stages_done), stage_report)

    try:
        if 'mr' in qcfg.stages and 'mr' not in stages_done:
            finish('mr', run_mr(run))
        else:
            prepare(model, qcfg)
            if resume is not None:
                model.load_state_dict(resume['state_dict'])
        run.units = build_units(backbone)  # after the swap: a unit may be a swapped module
        run.names = {id(m): name for name, m in model.named_modules()}
        if 'calibrate' not in stages_done:
            finish('calibrate', run_calibrate(run))
        target = set(quantizers(quant_target(model, qcfg)))
        missing = [name for name, m in model.named_modules()
                   if m in target and not bool(m.calibrated)]
        if missing:
            raise RuntimeError(f'{len(missing)} quantizer(s) were not calibrated: {missing[:5]}')
        if 'reconstruct' in qcfg.stages and 'reconstruct' not in stages_done:
            finish('reconstruct', run_reconstruct(run))
    finally:
        store.close()
    model.train(was_training)
    calib = [r for r in reports if r.get('stage', 'calibrate') == 'calibrate' and r['index'] >= 0]
    passes = sum(r['unit_passes'] for r in calib) / max(1, len(calib))
    return dict(quant_cfg=qcfg.to_dict(), num_images=num_images,
                seconds=time.perf_counter() - start, backbone_passes=passes,
                stages=stage_reports, stages_done=list(stages_done),
                layer_counts=count_quant_layers(quant_target(model, qcfg)), units=reports)
