"""How the chosen quantizer parameters change with the search budget (rows / attention maps
scored per layer).

    python benchmarks/search_budget_sweep.py [--images 4] [--size 512] [--blocks 2]

Calibrates the first Swin-T blocks (stock architecture, random weights, generated shape
images) at several budgets and compares every chosen parameter with the largest budget's:
relative change of activation scales (per tensor / per head), mean relative change of
per-channel weight scales, AdaLog bases, and the unit output SQNR.
"""
import argparse
import copy
import tempfile
import time

import torch
from mmdet.models.backbones import SwinTransformer

from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.block_calibration import calibrate_unit
from mmq.calibration.quantize import prepare
from mmq.calibration.units import build_units
from mmq.quantizers.base_quantizer import BaseQuantizer
from calibration_benchmark import load_images  # noqa: E402  (same folder)


def chosen_params(model):
    out = {}
    for name, q in model.named_modules():
        if isinstance(q, BaseQuantizer) and bool(q.calibrated):
            out[name] = (q.scale.clone(), int(q.q) if hasattr(q, 'q') else None)
    return out


def run(backbone, images, quant_cfg: dict, num_units: int):
    """Calibrate the first ``num_units`` units of a copy of ``backbone`` on ``images``
    (``(1, 3, H, W)`` tensors); its chosen parameters, each unit's output SQNR and seconds."""
    model = copy.deepcopy(backbone)
    qcfg = prepare(model, quant_cfg)
    units = build_units(model)[:num_units]
    store = ActivationStore()
    for img in images:
        store.append((img, ))
    names = {id(m): n for n, m in model.named_modules()}
    sqnr, seconds = [], []
    with torch.no_grad():
        for i, unit in enumerate(units):
            start = time.perf_counter()
            report, store = calibrate_unit(unit, store, qcfg, names, i)
            seconds.append(time.perf_counter() - start)
            sqnr.append(report['output_sqnr_db'])
    return chosen_params(model), sqnr, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=4)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--blocks', type=int, default=2, help='Swin blocks after patch_embed')
    parser.add_argument('--rows', type=int, nargs='+', default=[64, 256, 1024, 4096])
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = SwinTransformer(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                               window_size=7, convert_weights=False)
    backbone.eval()
    with tempfile.TemporaryDirectory() as root:
        images = load_images(root, args.images, args.size, args.size)
    results = {}
    for rows in args.rows:
        windows = max(4, rows // 8)
        print(f'budget {rows} rows / {windows} windows ...', flush=True)
        results[rows] = run(backbone, images,
                            dict(w_bits=4, a_bits=4, search_rows=rows, search_windows=windows),
                            1 + args.blocks)[:2]
    ref_params, _ = results[max(args.rows)]
    print('\n| rows / windows | act. scale change (median, max) | weight scale change (mean) '
          '| AdaLog bases q | unit output SQNR (dB) |')
    print('|---|---|---|---|---|')
    for rows in args.rows:
        params, sqnr = results[rows]
        act, wgt, bases = [], [], []
        for name, (scale, q) in params.items():
            ref_scale, _ = ref_params[name]
            change = ((scale - ref_scale).abs() / ref_scale.abs().clamp_min(1e-12))
            (wgt if name.endswith('weight_quantizer') else act).append(change.mean().item())
            if q is not None and q != 1:
                bases.append(q)
        act_t = torch.tensor(act)
        print(f'| {rows} / {max(4, rows // 8)} | {act_t.median().item():.1%}, '
              f'{act_t.max().item():.1%} | {sum(wgt) / max(1, len(wgt)):.1%} | '
              f'{bases} | {", ".join(f"{s:.2f}" for s in sqnr)} |')


if __name__ == '__main__':
    main()
