"""Calibration in a work dir: the files that make a long run resumable, without a Runner.

:class:`WorkDirCheckpointer` owns a work dir's calibration files: the running report, the
partial state after every finished backbone unit, ``stage_<name>.pth`` after every stage,
and the final quantized state and report. :func:`calibrate_in_work_dir` runs
:func:`mmq.quantize` under the work dir's lock with those callbacks, resuming a partial state
that was made from the same checkpoint, images, seed and mmq version (or refusing it).
``QuantCalibrationHook`` only adds the Runner's data, logger and rank broadcast.
"""
import os
import os.path as osp
import shutil
from typing import Callable, Iterable, Optional

from torch import nn

from mmq.config.quant_config import QuantConfig
from mmq.utils import WorkDirLock, atomic_write, write_json
from .quantize import quantize
from .quantized_state import (check_identity, load_partial_state, save_partial_state,
                              save_quantized_state)

STATE_FILE = 'quantized_state.pth'
PARTIAL_FILE = 'quantized_state.partial.pth'
REPORT_FILE = 'calibration_report.json'
SPILL_DIR = 'activations'


class WorkDirCheckpointer:
    """The calibration files of one work dir for one model, config and identity.

    Args:
        work_dir: The run's work dir.
        model: The model being calibrated (its state is what is saved).
        qcfg: Its quantization config.
        identity: What a partial state must have been made from to be resumed
            (checkpoint sha256, calibration images, seed, mmq version).
        logger: Where progress goes (optional).
    """

    def __init__(self, work_dir: str, model: nn.Module, qcfg: QuantConfig, identity: dict,
                 logger=None) -> None:
        self.work_dir, self.model, self.qcfg = work_dir, model, qcfg
        self.identity, self.logger = identity, logger
        self.report_path = osp.join(work_dir, REPORT_FILE)
        self.partial_path = osp.join(work_dir, PARTIAL_FILE)
        self.state_path = osp.join(work_dir, STATE_FILE)
        self.spill_dir = osp.join(work_dir, SPILL_DIR)
        self.done_units: list = []
        self.stages_done: list = []

    def _log(self, msg: str) -> None:
        if self.logger is not None:
            self.logger.info(msg)

    def remove_stale_spills(self) -> None:
        """Spilled activations left by a killed run are never read again: remove them."""
        if osp.isdir(self.spill_dir):
            shutil.rmtree(self.spill_dir)
            self._log(f'[mmq] removed stale spilled activations {self.spill_dir}')

    def resume_state(self, resume: bool = True,
                     resume_from: Optional[str] = None) -> Optional[dict]:
        """The partial state to continue from (checked against the identity), or ``None``:
        the work dir's own partial state when ``resume``, else ``resume_from`` (a
        ``stage_<name>.pth`` of an earlier run)."""
        partial = None
        if resume and osp.isfile(self.partial_path):
            partial = load_partial_state(self.partial_path)
            check_identity(partial, self.identity, self.partial_path)
        elif resume_from:
            if not osp.isfile(resume_from):
                raise FileNotFoundError(f'resume_from={resume_from!r} does not exist: give '
                                        'a stage_<name>.pth from an earlier run\'s work dir.')
            if osp.basename(resume_from) == STATE_FILE:
                raise ValueError(f'resume_from={resume_from!r} is a finished quantized '
                                 'state, not a stage result: evaluate it with --quant-state '
                                 '(load_state), or resume from a stage_<name>.pth.')
            partial = load_partial_state(resume_from)
            check_identity(partial, self.identity, resume_from)
        if partial is not None:
            self.done_units = list(partial['reports'])
            self.stages_done = list(partial.get('stages_done', []))
        return partial

    def on_unit_done(self, unit_report: dict) -> None:
        """Finished work survives a crash: the report so far, and after a backbone unit the
        partial state."""
        self.done_units.append(unit_report)
        write_json(self.report_path, dict(status='running', units=self.done_units))
        stage = unit_report.get('stage', 'calibrate')
        if stage != 'mr' and unit_report['index'] >= 0:
            save_partial_state(self.model, self.partial_path, self.qcfg,
                               unit_report['index'] + 1, self.done_units, stage,
                               self.stages_done, self.identity)

    def on_stage_done(self, stage: str, finished: list, stage_report: dict) -> None:
        """``stage_<name>.pth`` (a later run can start from it) and the partial state."""
        self.stages_done[:] = finished
        rest = [s for s in self.qcfg.stages if s not in finished]
        stage_path = osp.join(self.work_dir, f'stage_{stage}.pth')
        save_partial_state(self.model, stage_path, self.qcfg, 0, self.done_units,
                           rest[0] if rest else None, finished, self.identity)
        # the same state: copied, not saved again
        atomic_write(self.partial_path, lambda tmp: shutil.copyfile(stage_path, tmp))
        self._log(f"[mmq] stage {stage} done in {stage_report['seconds']:.1f} s; saved "
                  f'{stage_path}')

    def finish(self, report: dict) -> dict:
        """The final state and report; the partial state is no longer needed."""
        report.update(status='done', calibration_images=self.identity.get('images'),
                      checkpoint_sha256=self.identity.get('checkpoint_sha256'))
        save_quantized_state(self.model, self.state_path, self.qcfg)
        write_json(self.report_path, report)
        if osp.exists(self.partial_path):
            os.remove(self.partial_path)
        if osp.isdir(self.spill_dir) and not os.listdir(self.spill_dir):
            os.rmdir(self.spill_dir)  # the stores removed their files: no empty folder left
        return report


def calibrate_in_work_dir(model: nn.Module,
                          data: Iterable,
                          qcfg: QuantConfig,
                          work_dir: str,
                          identity: dict,
                          *,
                          resume: bool = True,
                          resume_from: Optional[str] = None,
                          activation_budget_bytes: int = 2 * 1024**3,
                          logger=None,
                          on_stage_done: Optional[Callable[[str, list, dict], None]] = None
                          ) -> dict:
    """:func:`mmq.quantize` with its files in ``work_dir`` (locked against a second run):
    resumable after a crash, the final state in ``quantized_state.pth``. Returns the report.
    ``on_stage_done`` is also called after each stage, once its files are saved.
    """
    os.makedirs(work_dir, exist_ok=True)
    with WorkDirLock(work_dir):
        files = WorkDirCheckpointer(work_dir, model, qcfg, identity, logger)
        files.remove_stale_spills()
        partial = files.resume_state(resume, resume_from)

        def stage_done(stage: str, finished: list, stage_report: dict) -> None:
            files.on_stage_done(stage, finished, stage_report)
            if on_stage_done is not None:
                on_stage_done(stage, finished, stage_report)

        report = quantize(model, data, qcfg, logger=logger,
                          activation_budget_bytes=activation_budget_bytes,
                          spill_dir=files.spill_dir, on_unit_done=files.on_unit_done,
                          resume=partial, on_stage_done=stage_done)
        return files.finish(report)
