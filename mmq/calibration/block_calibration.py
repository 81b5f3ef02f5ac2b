"""Block-wise calibration: each unit's inputs are pushed through that unit a constant number
of times (LayerNorm statistics, layer-input capture, quantized output), never once per layer.
The LayerNorm statistics pass stops each item's forward at the last LayerNorm-fed Linear.
"""
import math
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from mmq.config.quant_config import QuantConfig
from mmq.models.adapters import attention_output_parts, find_mlps, layernorm_pairs
from mmq.models.attention_output_reparam import reparameterize_attention_output
from mmq.models.layernorm_reparam import reparameterize
from mmq.models.mlp_channel_sort import sort_mlp_channels
from mmq.models.quant_linear import QuantLinear, sample_rows
from mmq.models.quant_matmul import QuantMatMul
from mmq.models.transform import QUANT_LAYERS, quantizers, set_quant_enabled
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.quantizers.fpcs import fpcs_uniform
from mmq.quantizers.layer_schedule import solve
from mmq.quantizers.objectives import sqnr_db
from mmq.quantizers.validation import check_finite
from mmq.utils import seeded_generator
from .activation_store import ActivationStore
from .units import Unit, first_tensor
from .weight_rounding import round_unit_weights

SQNR_ITEMS = 4  # calibration items the per-unit output SQNR is measured on


def _quantizer_params(layer: nn.Module) -> Dict[str, dict]:
    """Chosen parameters of a layer's quantizers, for the report (per-channel ones summarised)."""
    out = {}
    for name, q in layer.named_children():
        if not isinstance(q, BaseQuantizer) or not bool(q.calibrated):
            continue
        info = dict(type=type(q).__name__, bits=q.bits)
        if hasattr(q, 'clip'):  # dynamic per-token: the scales are the tokens' own
            info['clip'] = float(q.clip)
            out[name] = info
            continue
        scale = q.scale.flatten()
        if scale.numel() == 1:
            info['scale'] = float(scale)
        else:
            info.update(scale_min=float(scale.min()), scale_mean=float(scale.mean()),
                        scale_max=float(scale.max()))
        if hasattr(q, 'zero_point'):
            zp = q.zero_point.flatten()
            info['zero_point'] = float(zp) if zp.numel() == 1 else float(zp.float().mean())
        if hasattr(q, 'r'):
            info['base'] = f'2^({int(q.q)}/{q.r})'
        out[name] = info
    return out


LN_SEARCH_ROWS = 4096  # rows per LayerNorm -> Linear pair for ln_reparam_ranges='search'


def _searched_ranges(rows: torch.Tensor, bits: int) -> tuple:
    """Per-channel (min, max) from a per-channel FPCS self-MSE search on ``rows``."""
    result = fpcs_uniform(rows, bits, ch_axis=1, role='activation')
    scale, zp = result.params[:, 0], result.params[:, 1]
    return -zp * scale, (2**bits - 1 - zp) * scale


class _AllInputsSeen(Exception):
    """Raised by an input hook once every layer of interest has seen the current item."""


def _input_channel_ranges(unit: Unit, store: ActivationStore, layers: List[nn.Linear],
                          rows_per_item: int = 0,
                          generator: Optional[torch.Generator] = None,
                          mean_square: bool = False) -> Dict[int, List[torch.Tensor]]:
    """``id(layer) -> [min, max]`` per input channel of each layer over one pass of
    ``store``; with ``rows_per_item``, ``id(layer) -> [rows]`` (seeded samples) instead; with
    ``mean_square``, ``id(layer) -> [sum of squares (float64), rows]`` per channel.

    Only the layers' inputs are needed, so each item's forward stops once every layer has
    seen it (e.g. at fc1 of a block: the MLP, most of a block's cost, is not run)."""
    found: Dict[int, List[torch.Tensor]] = {}
    wanted, seen = {id(layer) for layer in layers}, set()

    def hook(layer, args):
        x = args[0].detach().reshape(-1, layer.in_features)
        if rows_per_item:
            found.setdefault(id(layer), []).append(sample_rows(x, rows_per_item, generator))
        elif mean_square:
            total, rows = found.get(id(layer), (0.0, 0))
            found[id(layer)] = [total + x.double().pow(2).sum(0), rows + x.shape[0]]
        elif id(layer) in found:
            lo, hi = found[id(layer)]
            found[id(layer)] = [torch.minimum(lo, x.amin(0)), torch.maximum(hi, x.amax(0))]
        else:
            found[id(layer)] = [x.amin(0), x.amax(0)]
        seen.add(id(layer))
        if len(seen) == len(wanted):
            raise _AllInputsSeen

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        for item in store:
            seen.clear()
            try:
                unit.run(item)
            except _AllInputsSeen:
                pass
    finally:
        for h in handles:
            h.remove()
    return found


def _layernorm_reparam(unit: Unit, store: ActivationStore, qcfg: QuantConfig,
                       generator: torch.Generator) -> int:
    pairs = [p for m in unit.module.modules() for p in layernorm_pairs(m)]
    if not pairs:
        return 0
    bits = qcfg.bits_for('ln_input')
    rows = (max(1, math.ceil(LN_SEARCH_ROWS / max(1, len(store))))
            if qcfg.ln_reparam_ranges == 'search' else 0)
    stats = _input_channel_ranges(unit, store, [lin for _, lin, _ in pairs], rows, generator)
    if rows:
        stats = {k: list(_searched_ranges(torch.cat(parts), bits)) for k, parts in stats.items()}
    for norm, lin, offset in pairs:
        reparameterize(norm, lin, *stats[id(lin)], bits, offset)
    return 1


def _attention_output_reparam(unit: Unit, store: ActivationStore, qcfg: QuantConfig) -> int:
    """Per-channel min / max of every attention output in ``unit`` (float pass), folded
    into v and proj (:func:`reparameterize_attention_output`)."""
    parts = [(m, *p) for m in unit.module.modules()
             for p in [attention_output_parts(m)] if p is not None]
    if not parts:
        return 0
    stats = _input_channel_ranges(unit, store, [proj for _, _, proj in parts])
    bits = qcfg.bits_for('proj_input')
    for attn, qkv, proj in parts:
        reparameterize_attention_output(attn, qkv, proj, *stats[id(proj)], bits)
    return 1


def _mlp_channel_sort(unit: Unit, store: ActivationStore) -> int:
    """Each MLP's hidden channels sorted by their RMS (float pass) where fc2's input is
    quantized in token groups (:func:`sort_mlp_channels`)."""
    mlps = [m for m in find_mlps(unit.module)
            if getattr(getattr(m.fc2, 'input_quantizer', None), 'group_size', None)]
    if not mlps:
        return 0
    stats = _input_channel_ranges(unit, store, [m.fc2 for m in mlps], mean_square=True)
    for mlp in mlps:
        total, rows = stats[id(mlp.fc2)]
        sort_mlp_channels(mlp.fc1, mlp.fc2, (total / rows).sqrt())
    return 1


def per_item_counts(total: int, num_items: int, generator: torch.Generator) -> List[int]:
    """How many rows (or attention maps) each of ``num_items`` items gives a layer's search
    sample so that it holds about ``total``: ``ceil(total / num_items)`` each while there are
    no more items than ``total``; with more, one each from ``total`` seeded items, so the
    search costs the same with 256 calibration images as with 32 (one per item would make the
    sample, and the search time, grow with the calibration set)."""
    if num_items <= total:
        return [max(1, math.ceil(total / num_items))] * num_items
    counts = [0] * num_items
    for i in torch.randperm(num_items, generator=generator)[:total].tolist():
        counts[i] = 1
    return counts


def capture_samples(layers: List[nn.Module], run_all: Callable[[], int], qcfg: QuantConfig,
                    generator: torch.Generator, num_items: int) -> Dict[int, object]:
    """Seeded input samples of ``layers`` while ``run_all()`` feeds ``num_items`` items:
    about ``qcfg.search_rows`` rows per Linear / Conv and ``qcfg.search_windows`` maps per
    matmul in all (:func:`per_item_counts`)."""
    num_items = max(1, num_items)
    rows = per_item_counts(qcfg.search_rows, num_items, generator)
    windows = per_item_counts(qcfg.search_windows, num_items, generator)
    got: Dict[int, list] = {id(layer): [] for layer in layers}
    calls: Dict[int, int] = {id(layer): 0 for layer in layers}

    def hook(layer, args):
        k = calls[id(layer)] % num_items
        calls[id(layer)] += 1
        if isinstance(layer, QuantMatMul):
            if windows[k]:
                got[id(layer)].append(layer.sample_inputs(args, windows[k], generator,
                                                          queries=qcfg.search_queries))
        elif rows[k]:
            outliers = int(round(rows[k] * qcfg.search_outliers))
            got[id(layer)].append(layer.sample_inputs(args, rows[k], generator, outliers))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        run_all()
    finally:
        for h in handles:
            h.remove()
    samples = {}
    for layer in layers:
        parts = got[id(layer)]
        if not parts:
            continue
        if isinstance(parts[0], tuple):
            samples[id(layer)] = tuple(torch.cat(p, dim=0) for p in zip(*parts))
        else:
            samples[id(layer)] = torch.cat(parts, dim=0)
    return samples


def calibrate_layers(layers: List[nn.Module], samples: Dict[int, object], qcfg: QuantConfig,
                     names: Dict[int, str], where: str) -> List[dict]:
    """Run the per-layer schedule on each layer's captured samples; per-layer reports."""
    reports = []
    for layer in layers:
        name = names.get(id(layer), f'{where}.?')
        if id(layer) not in samples:
            raise RuntimeError(f'layer {name} ({where}) received no input during calibration: '
                               'it is not on the forward path of the calibration images.')
        sample = samples[id(layer)]
        for i, t in enumerate(sample if isinstance(sample, tuple) else (sample, )):
            try:
                check_finite(t, f'input {i} of {name}')
            except ValueError as e:
                raise ValueError(f'{e} ({where}); the float model produces NaN/Inf on the '
                                 'calibration images.') from None
        problem = layer.calibration_problem(sample)
        sqnr_init, sqnr = solve(problem, qcfg.make_calibrator, qcfg.rounds,
                                b_is_weight=not isinstance(layer, QuantMatMul))
        folded = (qcfg.fold_gelu_shift and isinstance(layer, QuantLinear)
                  and layer.fold_input_shift())
        reports.append(
            dict(name=name, type=type(layer).__name__, sqnr_init_db=sqnr_init, sqnr_db=sqnr,
                 gelu_shift_folded=bool(folded), quantizers=_quantizer_params(layer)))
    return reports


def _run_store(unit: Unit, store: ActivationStore) -> Callable[[], int]:

    def run_all() -> int:
        for item in store:
            unit.run(item)
        return len(store)

    return run_all


def calibrate_unit(unit: Unit, store: ActivationStore, qcfg: QuantConfig,
                   names: Dict[int, str], index: int) -> tuple:
    """Calibrate every quantized layer of ``unit`` and return (report, next-unit inputs).

    Passes over the unit's inputs: LayerNorm statistics (where the unit has LayerNorm-fed
    Linears), capture (float: the layers' input samples and the float outputs the output
    SQNR is measured against), the weights' input Hessians (``weight_rounding='gptq'``),
    then the quantized outputs."""
    start = time.perf_counter()
    generator = seeded_generator(qcfg.seed, 'calibrate', index)
    layers = [m for m in unit.module.modules() if isinstance(m, QUANT_LAYERS)]
    passes = 0
    if qcfg.ln_reparam:
        passes += _layernorm_reparam(unit, store, qcfg, seeded_generator(
            qcfg.seed, 'ln_search', index))
    if qcfg.proj_reparam:
        passes += _attention_output_reparam(unit, store, qcfg)
    if qcfg.mlp_channel_sort:
        passes += _mlp_channel_sort(unit, store)
    # With no quantizer of the unit active yet, the capture pass is a float pass: keep the
    # float outputs of the first items for the output SQNR instead of running them again.
    float_capture = not any(q.is_active for q in quantizers(unit.module))
    references: List[torch.Tensor] = []

    def run_all() -> int:
        for i, item in enumerate(store):
            out = unit.run(item)
            if float_capture and i < SQNR_ITEMS:
                references.append(first_tensor(out))
        return len(store)

    samples = capture_samples(layers, run_all, qcfg, generator, len(store))
    passes += 1
    layer_reports = calibrate_layers(layers, samples, qcfg, names, f'calibration unit {unit.name}')
    rounding_reports, rounding_seconds = [], 0.0
    if qcfg.weight_rounding == 'gptq':
        rounding_start = time.perf_counter()
        rounding_reports = round_unit_weights(unit, store, qcfg.gptq_damp, names,
                                              qcfg.gptq_target)
        rounding_seconds = time.perf_counter() - rounding_start
        passes += 1
    # Quantized outputs become the next unit's inputs; SQNR against the float unit on a few.
    next_store = store.sibling()
    sqnrs = []
    for i, item in enumerate(store):
        out = unit.run(item)
        if i < SQNR_ITEMS:
            if i < len(references):
                ref = references[i]
            else:
                set_quant_enabled(unit.module, False)
                ref = first_tensor(unit.run(item))
                set_quant_enabled(unit.module, True)
            sqnrs.append(sqnr_db(ref, first_tensor(out)))
        next_store.append(out)
    passes += 1
    report = dict(stage='calibrate', unit=unit.name, index=index,
                  seconds=time.perf_counter() - start, unit_passes=passes,
                  output_sqnr_db=sum(sqnrs) / max(1, len(sqnrs)),
                  layers=layer_reports, spilled_items=next_store.spilled)
    if rounding_reports:
        report.update(weight_rounding=rounding_reports, weight_rounding_seconds=rounding_seconds)
    return report, next_store


def chain_outputs(unit: Unit, store: ActivationStore, quant: bool) -> ActivationStore:
    """The unit's outputs on every item of ``store`` (quantized or float mode)."""
    out = store.sibling()
    if not quant:
        set_quant_enabled(unit.module, False)
    try:
        with torch.no_grad():
            for item in store:
                out.append(unit.run(item))
    finally:
        set_quant_enabled(unit.module, True)
    return out


def calibrate_units(units: List[Unit], store: ActivationStore, qcfg: QuantConfig,
                    names: Dict[int, str], logger=None,
                    on_unit_done: Optional[callable] = None, done: int = 0) -> List[dict]:
    """Calibrate the chain of units in order, each on the previous one's quantized outputs.

    The first ``done`` units are already calibrated (a resumed run): their quantized outputs
    are recomputed with one forward pass each and they are not searched again.
    """
    reports = []
    first = store  # the caller's store (the images) stays open for later stages
    for i, unit in enumerate(units):
        if i < done:
            next_store = chain_outputs(unit, store, quant=True)
        else:
            report, next_store = calibrate_unit(unit, store, qcfg, names, i)
        if store is not first:
            store.close()
        store = next_store
        if i < done:
            continue
        reports.append(report)
        if logger is not None:
            layers = report['layers']
            before = sum(r['sqnr_init_db'] for r in layers) / max(1, len(layers))
            after = sum(r['sqnr_db'] for r in layers) / max(1, len(layers))
            logger.info(f"[mmq] unit {i + 1}/{len(units)} {unit.name}: {len(layers)} layers, "
                        f"{report['seconds']:.1f} s, mean layer SQNR {before:.2f} -> "
                        f"{after:.2f} dB (init -> searched), unit output SQNR "
                        f"{report['output_sqnr_db']:.2f} dB")
            rounding = report.get('weight_rounding', [])
            if rounding:
                before = sum(r['output_error_nearest'] for r in rounding)
                after = sum(min(r['output_error_nearest'], r['output_error_gptq'])
                            for r in rounding)
                logger.info(f"[mmq] unit {i + 1}/{len(units)} {unit.name}: GPTQ rounding on "
                            f"{sum(r['kept'] for r in rounding)}/{len(rounding)} layers, "
                            f"weights' output error {before:.4g} -> {after:.4g}, "
                            f"{report['weight_rounding_seconds']:.1f} s")
        if on_unit_done is not None:
            on_unit_done(report)
    if store is not first:
        store.close()
    return reports
