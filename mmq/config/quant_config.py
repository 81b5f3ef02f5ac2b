"""What to quantize and how: bit widths, the quantizer of each activation role, and the
calibration options. Configs give it as a plain dict (``quant_cfg=dict(...)``)."""
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional

from mmq.quantizers import GELU_SHIFT, UniformQuantizer
from mmq.quantizers.fpcs import LogSchedule, UniformSchedule
from mmq.quantizers.log_quant import ADALOG_BASE_RANGES
from mmq.quantizers.token_quantizer import ZERO_POINTS, check_group_size
from mmq.registry import CALIBRATORS as CALIBRATOR_REGISTRY
from mmq.registry import QUANTIZERS
from mmq.quantizers.validation import UNIFORM_BITS, check_bits
from .aphq_options import MROptions, ReconstructOptions, build_options, check_stages

# Config names -> the registered types they build.
QUANTIZER_TYPES = dict(adalog='AdaLogQuantizer', log2='Log2Quantizer',
                       logsqrt2='LogSqrt2Quantizer', uniform='UniformQuantizer')
CALIBRATOR_TYPES = dict(fpcs='FPCSCalibrator', minmax='MinMaxCalibrator',
                        percentile='PercentileCalibrator')
POWER_LAW_QUANTIZERS = tuple(QUANTIZER_TYPES)
CALIBRATORS = tuple(CALIBRATOR_TYPES)
SCOPES = ('backbone', 'detector')
# Activation roles whose bit width ``role_bits`` can set apart from ``a_bits``.
ROLES = ('ln_input', 'qk', 'v', 'post_softmax', 'proj_input', 'post_gelu', 'other')
# Roles ``token_roles`` can give dynamic per-token scales: the operands whose tokens are the
# rows (columns of ``k^T`` and of ``v``) an integer kernel can scale its accumulator by.
TOKEN_ROLES = ('ln_input', 'proj_input', 'qk', 'post_gelu', 'other', 'v', 'post_softmax')


def _quantizer(name: str, **kwargs):
    """A quantizer from the ``QUANTIZERS`` registry (looked up in mmq's own registry, so a
    Runner whose default scope is mmdet builds it without a scope warning)."""
    return QUANTIZERS.get(name)(**kwargs)


def _check_schedule(name: str, schedule) -> None:
    """Counts must be positive integers, shrink factors > 1, ranges ordered."""
    for key, value in vars(schedule).items():
        if key in ('shrink', ):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1
            need = 'a number > 1'
        elif key in ('init_width', ):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            need = 'a positive number'
        elif key == 'scale_range':
            ok = (isinstance(value, (tuple, list)) and len(value) == 2
                  and 0 < value[0] < value[1])
            need = 'a pair (lo, hi) with 0 < lo < hi'
        elif key == 'scale_quantiles':
            ok = value is None or (isinstance(value, (tuple, list)) and len(value) == 2
                                   and 0 <= value[0] < value[1] <= 1)
            need = 'None or a pair of quantiles (lo, hi) with 0 <= lo < hi <= 1'
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            need = 'a positive integer'
        if not ok:
            raise ValueError(f'quant_cfg.{name}.{key}={value!r} must be {need}.')


@dataclass
class QuantConfig:
    """Quantization settings.

    Args:
        w_bits: Weight bit width (per output channel, uniform).
        a_bits: Activation bit width.
        softmax: Quantizer of the post-Softmax attention: 'adalog' | 'log2' | 'logsqrt2' |
            'uniform' (unless ``token_roles`` names 'post_softmax').
        gelu: Quantizer of the post-GELU activation (the fc2 input), same choices (unless
            ``token_roles`` names 'post_gelu').
        calibrator: 'fpcs' (published), 'minmax' or 'percentile' (baselines).
        scope: 'backbone' (default) or 'detector' (also neck and heads; ConvTranspose2d stays
            float).
        ln_reparam: LayerNorm scale reparameterization of the qkv / fc1 / reduction inputs.
        ln_reparam_ranges: Per-channel ranges the reparameterization equalises: 'minmax'
            (RepQ-ViT: raw min / max of the calibration set) or 'search' (as the published
            AdaLog code: a per-channel FPCS self-MSE search on ``LN_SEARCH_ROWS`` sampled rows,
            so a few outlier tokens do not set a channel's range).
        proj_reparam: Attention-output reparameterization: per-channel ranges for the input
            of the attention's output projection, folded into v and proj
            (:mod:`mmq.models.attention_output_reparam`; beyond the published methods).
        mlp_channel_sort: Sort each MLP's hidden channels (fc1's outputs, fc2's inputs) by
            their RMS on the calibration set, so fc2's input token groups hold channels of
            like magnitude (an exact permutation; needs 'post_gelu' in ``token_roles`` and a
            ``token_group_size``; :mod:`mmq.models.mlp_channel_sort`; beyond the published
            methods).
        rounds: Rounds of [weights, activations] output-MSE search after the self-MSE
            initialisation (published: 3).
        search_rows: Rows (tokens, patches) per layer that candidates are scored on.
        search_windows: Attention maps (windows x images) per matmul scored.
        search_queries: Query rows per attention map scored, all keys kept (output rows of
            ``a @ b`` are independent, so a row subsample scores the same error; global
            attention over many tokens is otherwise the slowest search). Maps with no more
            rows are scored whole.
        dequant: Log-quantizer dequantization in evaluation: 'table' (integer kernel) or
            'exact'.
        adalog_base_range: The bases AdaLog searches: 'extended' (default: the published
            ``2^(q/37)``, ``q`` in [10, 137] up to 4 bits, finer bases from 5 bits on; beyond
            the published method, see :func:`mmq.quantizers.adalog_bases`) or 'published'
            (the published range at every width).
        fold_gelu_shift: Fold the post-GELU shift into fc2's bias (bias reparameterization).
        percentile: Upper quantile for the 'percentile' calibrator.
        uniform_schedule: Overrides of the uniform FPCS schedule
            (:class:`mmq.quantizers.UniformSchedule`; published defaults when empty).
        log_schedule: Overrides of the log FPCS schedule (:class:`mmq.quantizers.LogSchedule`).
        seed: Seed of every row subsample.
        stages: Calibration stages in order, a subset of ['mr', 'calibrate', 'reconstruct']
            that includes 'calibrate' (APHQ: all three).
        mr: Options of the 'mr' stage (:class:`mmq.models.aphq_options.MROptions`).
        search_outliers: Fraction of each image's ``search_rows`` share reserved for its rows
            of largest magnitude (outlier tokens; beyond the published method, which scores
            every token); the rest are sampled at random.
        role_bits: Bit widths per activation role, overriding ``a_bits`` (mixed precision /
            ablations): 'ln_input' (qkv, fc1 and patch-merging inputs, after LayerNorm), 'qk'
            (q and k of ``q @ k^T``), 'v', 'post_softmax', 'proj_input' (the attention
            output projection's input), 'post_gelu' (fc2's input, post-ReLU after MR),
            'other' (every other Linear / Conv input: pyramid, neck, heads).
        reconstruct: Options of the 'reconstruct' stage
            (:class:`mmq.models.aphq_options.ReconstructOptions`).
        token_roles: Activation roles quantized with dynamic per-token scales
            (:class:`mmq.quantizers.TokenQuantizer`: each token's own range at run time, a
            calibrated clip ratio) instead of static per-tensor / per-head ones: any of
            'ln_input', 'proj_input' (Linear inputs), 'qk' (q per query row, k per key) and
            'post_gelu' (fc2's input: uniform per token in place of ``gelu``'s static
            quantizer) and 'other' (every other Linear input per token, Conv2d inputs per
            pixel: the ViTDet pyramid, neck and heads), 'v' (per channel column of each head,
            over the tokens: the output columns of ``A @ v``) and 'post_softmax' (uniform per
            query row of ``A``, its output rows, in place of ``softmax``'s static log
            quantizer). Beyond the published methods (static scales); ``None``: all static.
        token_clip: How FPCS sets those quantizers' clip ratio: 'search' (on the layer
            output, as every other FPCS parameter) or 'full' (clip 1: every token's own
            min / max).
        token_group_size: Features per scale within a token for those quantizers (block
            scaling along the reduction axis, as the OCP MX formats' 32-element blocks; beyond
            the published methods); ``None``: one scale per token. For 'v' and
            'post_softmax' the groups run along the tokens / keys (``A @ v``'s reduction
            axis), whose count varies: a width it does not divide ends with a partial group.
        token_zero_point: The grid of those quantizers: 'integer' (it contains 0, an
            integer zero point) or 'float' (from each token's / group's clipped minimum to its
            clipped maximum, which are then kept exactly; the kernel's per-group offset term
            is the one an integer zero point already needs with ``token_group_size``; beyond
            the published methods).
        weight_rounding: How weights are rounded onto their searched grids: 'nearest'
            (published) or 'gptq' (error-compensated codes from the layer's input Hessian,
            :mod:`mmq.calibration.weight_rounding`; backbone Linears and Conv2ds; beyond the
            published methods). Block reconstruction, where it runs, learns the rounding
            again (from the float weight, or from GPTQ's codes with
            ``reconstruct.rounding_init='calibrated'``) and keeps GPTQ's for a unit it
            reverts.
        gptq_damp: GPTQ's diagonal damping, as a fraction of the Hessian's mean diagonal.
        gptq_target: What GPTQ's codes reproduce: 'quantized' (the layer's float weight on its
            quantized inputs, GPTQ's own objective) or 'float' (the layer's float output on
            its unquantized inputs, so the weights also absorb the input quantization error).
    """
    w_bits: int = 4
    a_bits: int = 4
    softmax: str = 'adalog'
    gelu: str = 'adalog'
    calibrator: str = 'fpcs'
    scope: str = 'backbone'
    ln_reparam: bool = True
    ln_reparam_ranges: str = 'minmax'
    proj_reparam: bool = False
    mlp_channel_sort: bool = False
    rounds: int = 1
    search_rows: int = 256
    search_windows: int = 32
    search_queries: int = 64
    search_outliers: float = 0.0
    dequant: str = 'table'
    adalog_base_range: str = 'extended'
    fold_gelu_shift: bool = True
    percentile: float = 0.9999
    uniform_schedule: Optional[dict] = None
    log_schedule: Optional[dict] = None
    seed: int = 0
    stages: List[str] = field(default_factory=lambda: ['calibrate'])
    mr: Optional[dict] = None
    reconstruct: Optional[dict] = None
    role_bits: Optional[Dict[str, int]] = None
    token_roles: Optional[List[str]] = None
    token_clip: str = 'search'
    token_group_size: Optional[int] = None
    token_zero_point: str = 'integer'
    weight_rounding: str = 'nearest'
    gptq_damp: float = 0.01
    gptq_target: str = 'quantized'

    def __post_init__(self) -> None:
        self.stages = list(check_stages(self.stages))
        self.mr_options()
        if self.reconstruct_options().box_head and self.scope != 'detector':
            raise ValueError("quant_cfg.reconstruct.box_head=True reconstructs the RoI box "
                             "head, which only scope='detector' quantizes: set "
                             "quant_cfg.scope='detector' or drop box_head.")
        check_bits(self.w_bits, UNIFORM_BITS, 'w_bits')
        check_bits(self.a_bits, UNIFORM_BITS, 'a_bits')
        if isinstance(self.search_outliers, bool) or not (
                isinstance(self.search_outliers, (int, float)) and 0 <= self.search_outliers <= 1):
            raise ValueError(f'quant_cfg.search_outliers={self.search_outliers!r} must be a '
                             'fraction in [0, 1].')
        if self.role_bits is not None:
            if not isinstance(self.role_bits, dict):
                raise ValueError(f'quant_cfg.role_bits={self.role_bits!r} must be a dict '
                                 f'{{role: bits}} with roles from {ROLES}.')
            self.role_bits = dict(self.role_bits)
            for role, bits in self.role_bits.items():
                if role not in ROLES:
                    raise ValueError(f'quant_cfg.role_bits: unknown role {role!r}; roles: '
                                     f'{ROLES}.')
                check_bits(bits, UNIFORM_BITS, f'role_bits.{role}')
        if self.token_roles is not None:
            if isinstance(self.token_roles, str) or not all(
                    r in TOKEN_ROLES for r in self.token_roles):
                raise ValueError(f'quant_cfg.token_roles={self.token_roles!r} must be a list '
                                 f'of roles from {TOKEN_ROLES}.')
            self.token_roles = list(self.token_roles)
        check_group_size(self.token_group_size, 'quant_cfg.token_group_size')
        if self.token_group_size is not None and not self.token_roles:
            raise ValueError('quant_cfg.token_group_size needs quant_cfg.token_roles (the '
                             'per-token quantized roles it splits into groups).')
        if self.token_zero_point == 'float' and not self.token_roles:
            raise ValueError('quant_cfg.token_zero_point needs quant_cfg.token_roles (the '
                             'per-token quantized roles whose grid it sets).')
        if self.mlp_channel_sort is True and (self.token_group_size is None
                                              or 'post_gelu' not in self.token_roles):
            raise ValueError("quant_cfg.mlp_channel_sort orders fc2's input channels for its "
                             "token groups: it needs 'post_gelu' in quant_cfg.token_roles and "
                             'a quant_cfg.token_group_size.')
        for name, allowed in (('softmax', POWER_LAW_QUANTIZERS), ('gelu', POWER_LAW_QUANTIZERS),
                              ('calibrator', CALIBRATORS), ('scope', SCOPES),
                              ('dequant', ('table', 'exact')),
                              ('adalog_base_range', ADALOG_BASE_RANGES),
                              ('ln_reparam_ranges', ('minmax', 'search')),
                              ('token_clip', ('search', 'full')),
                              ('token_zero_point', ZERO_POINTS),
                              ('weight_rounding', ('nearest', 'gptq')),
                              ('gptq_target', ('quantized', 'float'))):
            if getattr(self, name) not in allowed:
                raise ValueError(f'quant_cfg.{name}={getattr(self, name)!r} is not one of '
                                 f'{allowed}.')
        if (isinstance(self.gptq_damp, bool) or not isinstance(self.gptq_damp, (int, float))
                or not 0 < self.gptq_damp <= 1):
            raise ValueError(f'quant_cfg.gptq_damp={self.gptq_damp!r} must be a fraction in '
                             '(0, 1] (e.g. 0.01).')
        for name, schedule in (('uniform_schedule', UniformSchedule),
                               ('log_schedule', LogSchedule)):
            try:
                built = schedule(**(getattr(self, name) or {}))
            except TypeError as e:
                raise ValueError(f'quant_cfg.{name}={getattr(self, name)!r}: {e}') from None
            _check_schedule(name, built)
        for name in ('rounds', 'search_rows', 'search_windows', 'search_queries', 'seed'):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int)
                    or value < (0 if name in ('rounds', 'seed') else 1)):
                kind = 'a non-negative' if name in ('rounds', 'seed') else 'a positive'
                raise ValueError(f'quant_cfg.{name}={value!r} must be {kind} integer.')
        for name in ('ln_reparam', 'proj_reparam', 'mlp_channel_sort', 'fold_gelu_shift'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'quant_cfg.{name}={getattr(self, name)!r} must be True or '
                                 'False.')

    @classmethod
    def from_dict(cls, cfg: Optional[dict]) -> 'QuantConfig':
        """Build from a config dict, naming any unknown key."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f'unknown quant_cfg key(s) {unknown}; known: {sorted(known)}.')
        return cls(**cfg)

    def to_dict(self) -> dict:
        return asdict(self)

    def mr_options(self) -> MROptions:
        return build_options(MROptions, self.mr, 'mr')

    def reconstruct_options(self) -> ReconstructOptions:
        return build_options(ReconstructOptions, self.reconstruct, 'reconstruct')

    def make_calibrator(self, role: str):
        """The calibrator of an operand of ``role`` ('weight' or 'activation')."""
        args = dict(fpcs=dict(role=role, uniform_schedule=self.uniform_schedule,
                              log_schedule=self.log_schedule,
                              search_token_clip=self.token_clip == 'search'),
                    minmax=dict(),
                    percentile=dict(lower=1 - self.percentile, upper=self.percentile))
        return CALIBRATOR_REGISTRY.get(CALIBRATOR_TYPES[self.calibrator])(
            **args[self.calibrator])

    # Quantizer factories, one per role.
    def weight(self) -> UniformQuantizer:
        return _quantizer('UniformQuantizer', bits=self.w_bits, ch_axis=0)

    def bits_for(self, role: str) -> int:
        """The activation bit width of ``role`` (``role_bits``, else ``a_bits``)."""
        if role not in ROLES:
            raise ValueError(f'unknown activation role {role!r}; roles: {ROLES}.')
        return (self.role_bits or {}).get(role, self.a_bits)

    def activation(self, ch_axis: Optional[int] = None, role: str = 'other',
                   feature_axis: int = -1, pixel_channels: Optional[int] = None):
        """The quantizer of an activation of ``role``: static uniform (per tensor, or per
        ``ch_axis``), or dynamic per token where ``token_roles`` names the role
        (``feature_axis``: the axis a token's features lie on). ``pixel_channels``: a Conv2d
        input's channels, quantized per pixel when the role is a token role (in groups of
        ``token_group_size``, else all of them: a pixel's channels are one group of the
        unfolded patch)."""
        bits = self.bits_for(role)
        if self.per_token(role):
            return _quantizer('TokenQuantizer', bits=bits, feature_axis=feature_axis,
                              group_size=self.token_group_size or pixel_channels,
                              zero_point=self.token_zero_point)
        return _quantizer('UniformQuantizer', bits=bits, ch_axis=ch_axis)

    def _power_law(self, kind: str, role: str, **log_kwargs):
        args = dict(bits=self.bits_for(role))
        if kind != 'uniform':
            args.update(dequant=self.dequant, **log_kwargs)
        if kind == 'adalog':
            args.update(base_range=self.adalog_base_range)
        return _quantizer(QUANTIZER_TYPES[kind], **args)

    def post_softmax(self):
        if self.per_token('post_softmax'):
            return self.activation(role='post_softmax')
        return self._power_law(self.softmax, 'post_softmax', fixed_scale=1.0)

    def per_token(self, role: str) -> bool:
        """Whether ``token_roles`` gives ``role`` dynamic per-token scales."""
        return role in (self.token_roles or ())

    def post_relu(self):
        if self.per_token('post_gelu'):
            return self.activation(role='post_gelu')
        return _quantizer('UniformQuantizer', bits=self.bits_for('post_gelu'), fixed_zero_point=0)

    def post_gelu(self):
        if self.per_token('post_gelu'):
            return self.activation(role='post_gelu')
        return self._power_law(self.gelu, 'post_gelu', shift=GELU_SHIFT)
