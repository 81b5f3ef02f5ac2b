"""``mmq.quantize``: the library call behind the calibration hook, usable without a Runner."""
import time
from typing import Iterable, List, Optional, Union

import torch
from torch import nn

from mmq.models.quant_config import QuantConfig
from mmq.models.transform import count_quant_layers, quantize_modules, quantizers
from mmq.quantizers.validation import check_finite
from .activation_store import ActivationStore
from .block_calibration import calibrate_units
from .detector_calibration import calibrate_neck_and_heads
from .units import build_units


def _is_detector(model: nn.Module) -> bool:
    return hasattr(model, 'backbone') and hasattr(model, 'data_preprocessor')


def quant_target(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """The part of ``model`` the transform quantizes: its backbone, or the whole detector."""
    if not _is_detector(model):
        return model
    return model if qcfg.scope == 'detector' else model.backbone


def prepare(model: nn.Module, quant_cfg: Union[dict, QuantConfig]) -> QuantConfig:
    """Check the backbone is supported and swap modules (no calibration)."""
    qcfg = quant_cfg if isinstance(quant_cfg, QuantConfig) else QuantConfig.from_dict(quant_cfg)
    backbone = model.backbone if _is_detector(model) else model
    build_units(backbone)  # raises a clear error for unsupported backbones
    quantize_modules(quant_target(model, qcfg), qcfg)
    return qcfg


def _resume(model: nn.Module, partial: dict, qcfg: QuantConfig, num_units: int, logger):
    saved = QuantConfig.from_dict(partial['quant_cfg'])
    if saved != qcfg:
        raise ValueError('the partial calibration state was made with another quant_cfg; '
                         'delete it to start over.')
    done = int(partial['units_done'])
    if not 0 <= done <= num_units:
        raise ValueError(f'partial state has units_done={done}, the backbone has {num_units}.')
    model.load_state_dict(partial['state_dict'])
    if logger is not None:
        logger.info(f'[mmq] resuming calibration after unit {done}/{num_units}')
    return done, list(partial['reports'])


def _module_names(model: nn.Module) -> dict:
    return {id(m): name for name, m in model.named_modules()}


@torch.no_grad()
def quantize(model: nn.Module,
             data: Iterable,
             quant_cfg: Union[dict, QuantConfig],
             logger=None,
             activation_budget_bytes: int = 2 * 1024**3,
             spill_dir: Optional[str] = None,
             on_unit_done=None,
             resume: Optional[dict] = None) -> dict:
    """Quantize ``model`` in place and calibrate it on ``data``; returns the report.

    Args:
        model: An mmdet detector (its backbone is calibrated block by block) or a bare
            backbone / timm ``VisionTransformer``.
        data: For a detector, batches as its dataloader yields them (passed through
            ``model.data_preprocessor``); otherwise image tensors ``(B, 3, H, W)``.
        quant_cfg: :class:`QuantConfig` or its dict.
        logger: An mmengine ``MMLogger`` (or anything with ``.info``) for progress.
        activation_budget_bytes: Block inputs kept in memory; the rest spill to disk.
        spill_dir: Folder for spilled activations (a temporary one by default).
        on_unit_done: Called with each unit's report as soon as it is finished.
        resume: A partial state (``dict(quant_cfg, units_done, reports, state_dict)``, as
            :func:`mmq.calibration.save_partial_state` writes) to continue from: finished
            units are not searched again.
    """
    start = time.perf_counter()
    qcfg = prepare(model, quant_cfg)
    detector = _is_detector(model)
    backbone = model.backbone if detector else model
    was_training = model.training
    model.eval()
    store = ActivationStore(activation_budget_bytes, spill_dir)
    batches = []  # preprocessed detector batches, for the neck / heads (scope='detector')
    for batch in data:
        if detector:
            batch = model.data_preprocessor(batch, False)
            inputs = batch['inputs']
            if qcfg.scope == 'detector':
                batches.append(batch)
        else:
            inputs = batch
        check_finite(inputs, 'calibration image batch')
        store.append((inputs, ))
    if len(store) == 0:
        raise ValueError('the calibration set is empty: give at least one image (check the '
                         'calibration dataset path / ann_file and num_images).')
    num_images = sum(item[0].shape[0] for item in store)
    if logger is not None:
        logger.info(f'[mmq] calibrating {type(backbone).__name__} on {num_images} images '
                    f'({qcfg.calibrator}, W{qcfg.w_bits}A{qcfg.a_bits}, softmax={qcfg.softmax},'
                    f' gelu={qcfg.gelu})')
    units = build_units(backbone)
    reports: List[dict] = []
    done = 0
    if resume is not None:
        done, reports = _resume(model, resume, qcfg, len(units), logger)
    reports += calibrate_units(units, store, qcfg, _module_names(model), logger, on_unit_done,
                               done)
    if qcfg.scope == 'detector' and detector:
        reports.append(calibrate_neck_and_heads(model, batches, qcfg, _module_names(model),
                                                logger))
        if on_unit_done is not None:
            on_unit_done(reports[-1])
    target = set(quantizers(quant_target(model, qcfg)))
    missing = [name for name, m in model.named_modules() if m in target and not bool(m.calibrated)]
    if missing:
        raise RuntimeError(f'{len(missing)} quantizer(s) were not calibrated: {missing[:5]}')
    model.train(was_training)
    backbone_reports = [r for r in reports if r['index'] >= 0]
    passes = sum(r['unit_passes'] for r in backbone_reports) / max(1, len(backbone_reports))
    return dict(quant_cfg=qcfg.to_dict(), num_images=num_images,
                seconds=time.perf_counter() - start, backbone_passes=passes,
                layer_counts=count_quant_layers(quant_target(model, qcfg)), units=reports)
