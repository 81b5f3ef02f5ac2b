"""The stages of :func:`mmq.quantize`, each a function of one :class:`StageRun`.

'mr' (MLP Reconstruction on the float model, then the quantized structure), 'calibrate'
(FPCS / MinMax / percentile, block by block, then the neck and heads at detector scope) and
'reconstruct' (APH-weighted block reconstruction, then the neck at detector scope, and the
RoI box heads with ``reconstruct.box_head``). Each
returns its stage report; per-unit reports go through :meth:`StageRun.report_unit`.
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from torch import nn

from mmq.config.quant_config import QuantConfig
from mmq.models.transform import quantize_modules
from .activation_store import ActivationStore, FirstOfItems
from .aph import task_for
from .block_calibration import calibrate_units
from .box_head_reconstruction import reconstruct_box_heads
from .detector_calibration import calibrate_neck_and_heads
from .mlp_reconstruction import mlp_reconstruction
from .reconstruction_stage import reconstruct_neck, reconstruct_units
from .units import Unit, build_units, is_detector


def check_box_head(model: nn.Module, qcfg: QuantConfig) -> None:
    """``reconstruct.box_head`` needs a detector with an RoI box head (checked before any
    work: the box heads are reconstructed last)."""
    if 'reconstruct' not in qcfg.stages or not qcfg.reconstruct_options().box_head:
        return
    roi_head = getattr(model, 'roi_head', None) if is_detector(model) else None
    if roi_head is None or not getattr(roi_head, 'with_bbox', False):
        raise ValueError('quant_cfg.reconstruct.box_head=True reconstructs the RoI box head of '
                         f'a two-stage detector; {type(model).__name__} has none: drop '
                         'box_head.')


def quant_target(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """The part of ``model`` the transform quantizes: its backbone, or the whole detector."""
    if not is_detector(model):
        return model
    return model if qcfg.scope == 'detector' else model.backbone


@dataclass
class StageRun:
    """What the stages of one :func:`mmq.quantize` call share.

    ``reports`` collects every unit report in order (a resumed run starts with the saved
    ones); ``resume_stage`` / ``units_done`` say where a resumed stage continues;
    ``reference`` is the original float model kept for reconstruction after MR.
    """
    model: nn.Module
    backbone: nn.Module
    detector: bool
    qcfg: QuantConfig
    store: ActivationStore
    batches: Sequence[dict]  # detector batches (scope='detector'), images from ``store``
    logger: object = None
    on_unit_done: Optional[Callable[[dict], None]] = None
    reports: List[dict] = field(default_factory=list)
    resume_stage: Optional[str] = None
    units_done: int = 0
    reference: Optional[nn.Module] = None
    units: List[Unit] = field(default_factory=list)
    names: Dict[int, str] = field(default_factory=dict)

    def report_unit(self, report: dict) -> None:
        """A finished unit (or stage-wide) report: kept, and handed to ``on_unit_done``."""
        self.reports.append(report)
        if self.on_unit_done is not None:
            self.on_unit_done(report)

    def done_in(self, stage: str) -> int:
        """Units of ``stage`` a resumed run has already finished."""
        return self.units_done if self.resume_stage == stage else 0

    @property
    def detector_scope(self) -> bool:
        return self.qcfg.scope == 'detector' and self.detector


def run_mr(run: StageRun) -> dict:
    """MLP Reconstruction on the float model, then the quantized structure (ReLU MLPs)."""
    opts = run.qcfg.mr_options()
    forward, task_loss, eps = task_for(run.model, opts.eps)
    report = mlp_reconstruction(run.model, run.backbone, forward, task_loss, eps,
                                FirstOfItems(run.store), opts, run.qcfg.seed,
                                run.logger)
    quantize_modules(quant_target(run.model, run.qcfg), run.qcfg)  # the MLPs are ReLU now
    report.update(index=-2, unit='mlp_reconstruction')
    run.report_unit(report)
    return report


def run_calibrate(run: StageRun) -> dict:
    """Block-wise calibration of the backbone units, then the neck and heads."""
    start = time.perf_counter()
    calibrate_units(run.units, run.store, run.qcfg, run.names, run.logger,
                    run.report_unit, run.done_in('calibrate'))
    if run.detector_scope:
        run.report_unit(calibrate_neck_and_heads(run.model, run.batches, run.qcfg, run.names,
                                                 run.logger))
    return dict(stage='calibrate', seconds=time.perf_counter() - start)


def run_reconstruct(run: StageRun) -> dict:
    """APH-weighted reconstruction of the backbone units (towards the original float model
    when MR ran), then the neck, then (``box_head``) the RoI box heads."""
    opts = run.qcfg.reconstruct_options()
    fp_model = run.model if run.reference is None else run.reference
    forward, task_loss, eps = task_for(fp_model, opts.eps)
    fp_units = None
    if run.reference is not None:
        fp_units = build_units(run.reference.backbone if run.detector else run.reference)
    rec = reconstruct_units(fp_model, run.units, run.store, forward, task_loss, eps, opts,
                            run.qcfg.seed, run.logger, run.report_unit,
                            run.done_in('reconstruct'), fp_units)
    if run.detector_scope and getattr(run.model, 'neck', None) is not None:
        run.report_unit(reconstruct_neck(run.model, fp_model, run.store, opts, run.qcfg.seed,
                                         run.logger))
    if opts.box_head:
        for report in reconstruct_box_heads(run.model, fp_model, run.batches, run.store, opts,
                                            run.qcfg.seed, run.logger):
            run.report_unit(report)
    return dict(stage='reconstruct', seconds=rec['seconds'], aph_seconds=rec['aph_seconds'])
