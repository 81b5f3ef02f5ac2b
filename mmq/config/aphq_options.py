"""Options of the APHQ calibration stages (``quant_cfg.mr`` and ``quant_cfg.reconstruct``).

Defaults are the published ones; the demo presets shrink iterations and batches for CPU.
"""
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

STAGES = ('mr', 'calibrate', 'reconstruct')


@dataclass
class MROptions:
    """MLP Reconstruction (``methods.md`` 6).

    Args:
        iters: Adam steps per MLP.
        batch: Token rows per step.
        rows: Token rows sampled (seeded) from the calibration images per MLP.
        lr: Adam learning rate (cosine-annealed to 0).
        percentile: ``ub`` = this percentile of the positive float GELU outputs (0.999 for
            detection; 0.99 at 3 bits and 0.98 at 4 in classification).
        clamp_weight: Weight of the clamped term (published: 2).
        eps: APH perturbation (``None``: 1e-3 for detectors, 1e-6 for classifiers).
        aph_images: Calibration batches the APH importance is averaged over (``None``: all;
            fewer saves two model passes per MLP per batch).
        fc2_init: ``'lstsq'`` starts each fc2 from the ridge least-squares fit of the GELU
            MLP's output on the ReLU hidden activations of the sampled rows (beyond the
            published method, which starts from the GELU weights); ``'none'``: published.
    """
    iters: int = 1000
    batch: int = 1024
    rows: int = 8192
    lr: float = 4e-5
    percentile: float = 0.999
    clamp_weight: float = 2.0
    eps: Optional[float] = None
    aph_images: Optional[int] = None
    fc2_init: str = 'none'


@dataclass
class ReconstructOptions:
    """Block reconstruction with AdaRound, learned activation scales and QDrop
    (``methods.md`` 5).

    Args:
        iters: Steps per block (published: 20000).
        batch: Images per step (published: 32).
        pass_bytes: Most bytes of tensors autograd keeps for backward in one forward /
            backward pass: a step's batch is split into passes (at least one item each;
            measured on a one-item pass per input shape) whose gradients are accumulated, so
            memory does not grow with ``batch`` (the same gradient up to float summation
            order). ``None``: the whole batch in one pass.
        lr: Adam learning rate of the activation scales (cosine-annealed).
        round_lr: Adam learning rate of the AdaRound variables.
        round_weight: Weight of the rounding regulariser (mean over weights).
        beta: Regulariser exponent annealed from ``beta[0]`` to ``beta[1]``.
        warmup: Fraction of steps before the regulariser starts.
        drop_prob: QDrop: probability that an activation quantizer passes its float input.
        learn_log_scales: Also learn the scale of the post-GELU AdaLog quantizers (their
            base stays the searched one; published: only uniform scales are learned).
        eps: APH perturbation (``None``: 1e-3 for detectors, 1e-6 for classifiers).
        aph_images: Calibration batches the APH importance is averaged over (``None``: all).
        box_head: Also reconstruct the RoI box head(s) after the neck (``scope='detector'``
            only; beyond the published pipeline, which leaves the heads calibrated; see
            :mod:`mmq.calibration.box_head_reconstruction`).
        box_head_rois: RoIs per image the box heads are reconstructed on (the float model's
            best proposals).
        rounding_init: Where the learned rounding starts: 'float' (published: the soft
            rounding reproduces the float weight) or 'calibrated' (halfway towards the
            calibration's codes where it chose any, e.g. ``weight_rounding='gptq'``, so that
            hardening at once gives them back; beyond the published method).
    """
    iters: int = 20000
    batch: int = 32
    pass_bytes: Optional[int] = 2**30
    lr: float = 4e-5
    round_lr: float = 1e-3
    round_weight: float = 0.01
    beta: Tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    drop_prob: float = 0.5
    eps: Optional[float] = None
    aph_images: Optional[int] = None
    learn_log_scales: bool = False
    box_head: bool = False
    box_head_rois: int = 128
    rounding_init: str = 'float'


def build_options(cls, cfg: Optional[dict], key: str):
    """``cls(**cfg)`` naming any unknown or bad option."""
    cfg = dict(cfg or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f'unknown quant_cfg.{key} option(s) {unknown}; known: {sorted(known)}.')
    opts = cls(**cfg)
    for f in fields(cls):
        v = getattr(opts, f.name)
        if f.name in ('aph_images', 'pass_bytes') and v is None:
            continue
        if f.name in ('iters', 'batch', 'rows', 'aph_images', 'pass_bytes', 'box_head_rois') and (
                not isinstance(v, int) or v < 1):
            raise ValueError(f'quant_cfg.{key}.{f.name}={v!r} must be a positive integer.')
        if f.name == 'box_head' and not isinstance(v, bool):
            raise ValueError(f'quant_cfg.{key}.box_head={v!r} must be True or False.')
        if f.name in ('lr', 'round_lr') and not v > 0:
            raise ValueError(f'quant_cfg.{key}.{f.name}={v!r} must be positive.')
        if f.name in ('percentile', 'drop_prob', 'warmup') and not 0 <= v <= 1:
            raise ValueError(f'quant_cfg.{key}.{f.name}={v!r} must be in [0, 1].')
        if f.name == 'rounding_init' and v not in ('float', 'calibrated'):
            raise ValueError(f"quant_cfg.{key}.rounding_init={v!r} must be 'float' (published) "
                             "or 'calibrated'.")
        if f.name == 'fc2_init' and v not in ('none', 'lstsq'):
            raise ValueError(f"quant_cfg.{key}.fc2_init={v!r} must be 'none' (published: "
                             "start from the GELU weights) or 'lstsq'.")
    return opts


def check_stages(stages) -> Tuple[str, ...]:
    """Stages must be a subset of ('mr', 'calibrate', 'reconstruct'), in that order, and
    include 'calibrate' (it sets every quantizer's parameters)."""
    stages = tuple(stages)
    if (not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages)
            or list(stages) != sorted(stages, key=STAGES.index) or 'calibrate' not in stages):
        raise ValueError(f'quant_cfg.stages={list(stages)} must be a subset of {list(STAGES)} in '
                         "that order that includes 'calibrate', e.g. ['mr', 'calibrate', "
                         "'reconstruct'].")
    return stages


def options_dict(opts) -> dict:
    return asdict(opts)
