"""``QuantCalibrationHook``: quantize and calibrate the model before the Runner tests it."""
import os.path as osp
from typing import Optional

import torch
from mmengine.dataset import pseudo_collate
from mmengine.dist import broadcast_object_list, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch.utils.data import DataLoader, Subset

from mmq.calibration import load_quantized_state
from mmq.calibration.quantize import prepare
from mmq.calibration.work_dir import STATE_FILE, calibrate_in_work_dir
from mmq.config.quant_config import QuantConfig
from mmq.float_checkpoint import (load_checkpoint_without_code,
                                  read_local_checkpoints_without_code)
from mmq.registry import HOOKS
from mmq.utils import file_sha256, seeded_generator
from mmq.version import __version__


@HOOKS.register_module()
class QuantCalibrationHook(Hook):
    """Quantize the model and calibrate it on training images before test / val.

    The work is :func:`mmq.calibration.work_dir.calibrate_in_work_dir` (:func:`mmq.quantize`
    with resumable files in the work dir); this hook only builds the calibration data and the
    identity a resumed state must match, and keeps ranks identical.

    Args:
        quant_cfg (dict, optional): :class:`mmq.QuantConfig` fields; ``None`` reads the
            config's top-level ``quant_cfg``.
        num_images (int): Calibration images, drawn (seeded) from the training split.
        seed (int): Seed of that draw.
        use_eval_set (bool): Draw from the test set instead (logged as a warning: the
            evaluation then sees its own calibration images).
        load_state (str, optional): A saved quantized state to load instead of calibrating.
        require_checkpoint (bool): Refuse to calibrate random weights (no ``load_from``).
        activation_budget_gb (float): Activations kept in memory, all together (images,
            block inputs and outputs, reconstruction targets); the rest spill to disk.
        resume (bool): Continue an interrupted run from the partial state saved in the work
            dir after every block and stage (finished blocks and stages are not run again).
        resume_from (str, optional): Start from this saved stage result
            (``stage_<name>.pth`` of an earlier run, e.g. ``stage_calibrate.pth`` to only run
            'reconstruct'); its finished stages must begin ``quant_cfg.stages``.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 quant_cfg: Optional[dict] = None,
                 num_images: int = 32,
                 seed: int = 0,
                 use_eval_set: bool = False,
                 load_state: Optional[str] = None,
                 require_checkpoint: bool = True,
                 activation_budget_gb: float = 2.0,
                 resume: bool = True,
                 resume_from: Optional[str] = None) -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'num_images={num_images!r} must be a positive integer.')
        if quant_cfg is not None:
            QuantConfig.from_dict(quant_cfg)  # configuration errors surface at build time
        self.quant_cfg = quant_cfg
        self.num_images = num_images
        self.seed = seed
        self.use_eval_set = use_eval_set
        self.load_state = load_state
        self.require_checkpoint = require_checkpoint
        self.activation_budget_gb = activation_budget_gb
        self.resume = resume
        self.resume_from = resume_from
        self._done = False

    def before_run(self, runner) -> None:
        # The Runner loads ``load_from`` right after this point, with ``torch.load``, which
        # (weights_only=True) refuses the checkpoints mmengine's training loop writes: read
        # them without running code instead (tensors exact, bookkeeping inert).
        read_local_checkpoints_without_code()

    def before_test(self, runner) -> None:
        self._quantize_once(runner)

    def before_val(self, runner) -> None:
        self._quantize_once(runner)

    # -------------------------------------------------------------------------------------
    def _quant_cfg(self, runner) -> QuantConfig:
        cfg = self.quant_cfg if self.quant_cfg is not None else runner.cfg.get('quant_cfg')
        if cfg is None:
            raise ValueError('QuantCalibrationHook has no quant_cfg: add a quant preset to the '
                             "config's _base_ (e.g. configs/_base_/quant/w4a4_adalog.py).")
        return QuantConfig.from_dict(cfg)

    def calibration_loader(self, runner) -> DataLoader:
        """Seeded subset of the training split, read with the test pipeline."""
        from mmdet.registry import DATASETS
        cfg = runner.cfg
        if self.use_eval_set:
            runner.logger.warning('[mmq] calibrating on the EVALUATION set (use_eval_set=True): '
                                  'the reported metrics are then optimistic.')
            dataset_cfg = cfg.test_dataloader.dataset.copy()
        else:
            dataset_cfg = cfg.train_dataloader.dataset.copy()
            while 'dataset' in dataset_cfg and 'pipeline' not in dataset_cfg:
                dataset_cfg = dataset_cfg.dataset.copy()  # unwrap RepeatDataset & co.
            dataset_cfg.pipeline = cfg.test_dataloader.dataset.pipeline
        where = f"{dataset_cfg.get('data_root', '')}{dataset_cfg.get('ann_file', '')}"
        try:
            dataset = DATASETS.build(dataset_cfg)
        except ValueError as e:  # mmengine cannot serialise an empty annotation list
            raise ValueError(f'the calibration dataset is empty or unreadable ({where}: {e}): '
                             'check data_root / ann_file / filter_cfg.') from e
        if len(dataset) == 0:
            raise ValueError(f'the calibration dataset is empty ({where}): check data_root / '
                             'ann_file / filter_cfg.')
        g = seeded_generator(self.seed, 'images')
        count = min(self.num_images, len(dataset))
        if count < self.num_images:
            runner.logger.warning(
                f'[mmq] num_images={self.num_images} but the calibration dataset ({where}) has '
                f'{count} images: calibrating on all {count}. Lower num_images (or '
                '--num-images) to silence this, or point the dataset at more images.')
        indices = torch.randperm(len(dataset), generator=g)[:count].tolist()
        return DataLoader(Subset(dataset, indices), batch_size=1, shuffle=False,
                          num_workers=0, collate_fn=pseudo_collate)

    def _quantize_once(self, runner) -> None:
        if self._done:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        qcfg = self._quant_cfg(runner)
        state_path = osp.join(runner.work_dir, STATE_FILE)
        if self.load_state:
            load_quantized_state(model, self.load_state, qcfg)
            runner.logger.info(f'[mmq] loaded quantized state {self.load_state}')
            self._done = True
            return
        if self.require_checkpoint and not runner.cfg.get('load_from'):
            raise ValueError('no float checkpoint to quantize: pass CHECKPOINT to '
                             'tools/quantize.py (or set load_from); set '
                             'require_checkpoint=False only to calibrate random weights.')
        if runner.cfg.get('load_from'):
            check_checkpoint_matches(model, runner.cfg.load_from)
        state = [None]
        if not is_main_process():
            prepare(model, qcfg)  # the structure rank 0's state is loaded into
        if is_main_process():
            report = self._calibrate(runner, model, qcfg)
            state = [model.state_dict()]
            runner.logger.info(f"[mmq] calibrated in {report['seconds']:.1f} s; saved "
                               f'{state_path}')
        if get_world_size() > 1:
            broadcast_object_list(state, src=0)
            if get_rank() != 0:
                model.load_state_dict(state[0])
        self._done = True

    def _identity(self, runner, loader: DataLoader) -> dict:
        """What a partial state must have been made from to be resumed by this run."""
        ckpt = runner.cfg.get('load_from')
        return dict(checkpoint_sha256=file_sha256(ckpt) if ckpt else None,
                    images=[loader.dataset.dataset.get_data_info(i)['img_path']
                            for i in loader.dataset.indices],
                    seed=self.seed, mmq_version=__version__)

    def _calibrate(self, runner, model, qcfg: QuantConfig) -> dict:
        loader = self.calibration_loader(runner)
        return calibrate_in_work_dir(
            model, loader, qcfg, runner.work_dir, self._identity(runner, loader),
            resume=self.resume, resume_from=self.resume_from,
            activation_budget_bytes=int(self.activation_budget_gb * 1024**3),
            logger=runner.logger)


def check_checkpoint_matches(model, path: str) -> None:
    """Refuse to quantize when the float checkpoint does not fit the config's model (mmengine
    only warns and leaves the unmatched weights random)."""
    ckpt, _ = load_checkpoint_without_code(path)  # clear errors for missing / bad files
    ckpt = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    model_state = model.state_dict()
    missing = [k for k in model_state if k.startswith('backbone.') and k not in ckpt]
    shapes = [
        f'{k} {tuple(ckpt[k].shape)} vs {tuple(v.shape)}' for k, v in model_state.items()
        if k in ckpt and hasattr(ckpt[k], 'shape') and tuple(ckpt[k].shape) != tuple(v.shape)
    ]
    if missing or shapes:
        hint = (' It looks like the mmdet 2.x Swin layout: convert it with '
                'tools/convert_swin_det_checkpoint.py.'
                if any(k.startswith('backbone.layers.') for k in ckpt) else '')
        raise ValueError(f'checkpoint {path!r} does not match the config\'s model: '
                         f'{len(missing)} backbone keys missing (e.g. {missing[:3]}), '
                         f'{len(shapes)} shape mismatches (e.g. {shapes[:3]}).{hint}')
