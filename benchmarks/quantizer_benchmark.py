"""Quantizer benchmark: uniform (MinMax, percentile, FPCS), log2, log-sqrt2 and AdaLog (FPCS) on
post-Softmax and post-GELU activations and on synthetic power-law data, at 3, 4, 5, 6 and 8
bits; and FPCS against an exhaustive grid (loss ratio, wall-time ratio, same run).

    python benchmarks/quantizer_benchmark.py [--out benchmarks/results/quantizer_benchmark.json]

Activations come from one forward of an mmdet ``SwinTransformer`` (Swin-T shape; random
initialisation until the demo detector exists) on a random 224x320 image: the attention
matrix of stage-1 block-1 (its output is ``attn @ v``) and the GELU output of the same block
(its output is ``fc2(x)``). Every search scores candidates on a seeded subsample of rows;
MSE and cosine are measured on all rows.
"""
import argparse
import json
import os
import time
from typing import Callable, Dict, List

import torch
from torch.nn import functional as F

from mmq.quantizers import (GELU_SHIFT, AdaLogQuantizer, FPCSCalibrator, Log2Quantizer,
                            LogSqrt2Quantizer, MinMaxCalibrator, PercentileCalibrator,
                            UniformQuantizer, fpcs_uniform, output_mse, uniform_dense_grid)


class Case:
    """A tensor to quantize and the layer that consumes it, ``op(x, operand)``; searches score
    candidates on a seeded subsample of rows (tokens, or whole attention maps)."""

    def __init__(self, name: str, kind: str, x: torch.Tensor, op: Callable,
                 operand: torch.Tensor, search_rows: int):
        if kind == 'gelu':
            x = x.reshape(-1, x.shape[-1])
        self.name, self.kind, self.x, self.op, self.operand = name, kind, x, op, operand
        self.reference = op(x, operand)
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        idx = idx[:search_rows]
        self.search_x = x[idx]
        sub_operand = operand[idx] if kind == 'softmax' else operand
        self.search_objective = output_mse(lambda xq: op(xq, sub_operand),
                                           op(self.search_x, sub_operand))

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.operand)


def capture_swin(seed: int = 0) -> Dict[str, torch.Tensor]:
    """The attention matrix, v, GELU output and fc2 of stage-1 block-1 of a Swin-T."""
    from mmdet.models.backbones import SwinTransformer
    torch.manual_seed(seed)
    model = SwinTransformer(
        embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
        convert_weights=False)
    model.eval()  # mmdet's SwinTransformer.train() returns None: do not chain it
    block = model.stages[0].blocks[0]
    msa = block.attn.w_msa
    got = {}
    hooks = [
        msa.softmax.register_forward_hook(lambda m, i, o: got.__setitem__('attn', o)),
        msa.qkv.register_forward_hook(lambda m, i, o: got.__setitem__('qkv', o)),
        block.ffn.layers[0][1].register_forward_hook(lambda m, i, o: got.__setitem__('gelu', o)),
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 320))
    for h in hooks:
        h.remove()
    b, n, c3 = got['qkv'].shape
    heads = msa.num_heads
    v = got['qkv'].reshape(b, n, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)[2]
    fc2 = block.ffn.layers[1]
    return dict(attn=got['attn'], v=v, gelu=got['gelu'], fc2_w=fc2.weight.detach(),
                fc2_b=fc2.bias.detach())


def build_cases(search_rows: int) -> List[Case]:
    cap = capture_swin()
    g = torch.Generator().manual_seed(1)
    # Synthetic power law: rows normalised like attention (sum to 1), heavy-tailed GELU inputs.
    raw = torch.rand(64, 4, 49, 49, generator=g)**12
    pl_attn = raw / raw.sum(-1, keepdim=True)
    pl_v = torch.randn(64, 4, 49, 32, generator=g)
    pl_gelu = F.gelu(torch.randn(4096, 384, generator=g) * torch.rand(384, generator=g) * 4)
    pl_w = torch.randn(96, 384, generator=g) * 0.05
    matmul = lambda a, v: a @ v  # noqa: E731
    fc2 = lambda x, w: F.linear(x, w)  # noqa: E731
    swin_fc2 = lambda x, wb: F.linear(x, wb[:, :-1], wb[:, -1])  # noqa: E731
    fc2_wb = torch.cat([cap['fc2_w'], cap['fc2_b'][:, None]], dim=1)
    return [
        Case('swin post-Softmax', 'softmax', cap['attn'], matmul, cap['v'], search_rows),
        Case('swin post-GELU', 'gelu', cap['gelu'], swin_fc2, fc2_wb, search_rows),
        Case('synthetic power-law softmax', 'softmax', pl_attn, matmul, pl_v, search_rows),
        Case('synthetic heavy-tail GELU', 'gelu', pl_gelu, fc2, pl_w, search_rows),
    ]


def methods(kind: str, bits: int):
    """(name, quantizer, calibrator) for each method on one kind of activation."""
    log_kw = dict(fixed_scale=1.0) if kind == 'softmax' else dict(shift=GELU_SHIFT)
    return [
        ('uniform MinMax', UniformQuantizer(bits), MinMaxCalibrator()),
        ('uniform percentile', UniformQuantizer(bits), PercentileCalibrator(0.0, 0.999)),
        ('uniform FPCS', UniformQuantizer(bits), FPCSCalibrator()),
        ('log2 (FPCS scale)', Log2Quantizer(bits, **log_kw), FPCSCalibrator()),
        ('log-sqrt2 (FPCS scale)', LogSqrt2Quantizer(bits, **log_kw), FPCSCalibrator()),
        ('AdaLog FPCS', AdaLogQuantizer(bits, **log_kw), FPCSCalibrator()),
    ]


def evaluate(case: Case, quantizer) -> Dict[str, float]:
    quantizer.eval()
    with torch.no_grad():
        xq = quantizer(case.x)
        out = case.output(xq)
    mse = float((xq - case.x).pow(2).mean())
    cos = float(F.cosine_similarity(out.flatten(), case.reference.flatten(), dim=0))
    return dict(mse=mse, cosine=cos)


def accuracy_table(cases: List[Case], bits_list) -> List[Dict]:
    rows = []
    for case in cases:
        for bits in bits_list:
            for name, quantizer, calibrator in methods(case.kind, bits):
                start = time.perf_counter()
                if isinstance(calibrator, FPCSCalibrator):
                    calibrator(quantizer, case.search_x, case.search_objective)
                else:  # MinMax / percentile are cheap: they see every row
                    calibrator(quantizer, case.x)
                seconds = time.perf_counter() - start
                rows.append(dict(case=case.name, bits=bits, method=name, seconds=seconds,
                                 **evaluate(case, quantizer)))
                r = rows[-1]
                print(f"  {case.name:28s} {bits}-bit {name:24s} mse={r['mse']:.3e} "
                      f"cos={r['cosine']:.5f} ({seconds:.2f}s)", flush=True)
    return rows


def fpcs_vs_grid(cases: List[Case]) -> List[Dict]:
    """FPCS against dense grids on the fc2 weight (per output channel, layer-output MSE)."""
    case = next(c for c in cases if c.name == 'swin post-GELU')
    w = case.operand[:, :-1]
    x = case.search_x[:512]
    objective = output_mse(lambda wq: x @ wq.transpose(-1, -2), x @ w.t(), out_ch_axis=-1)
    rows = []
    for bits in (3, 4, 6):
        start = time.perf_counter()
        fpcs = fpcs_uniform(w, bits, 0, objective, role='weight')
        t_fpcs = time.perf_counter() - start
        num_zp = min(16, 2**(bits - 1))
        for grid_size in (1024, 4096):
            start = time.perf_counter()
            grid = uniform_dense_grid(w, bits, 0, objective, grid_size // num_zp, num_zp)
            t_grid = time.perf_counter() - start
            rows.append(dict(bits=bits, fpcs_evals=fpcs.evaluations, grid_evals=grid.evaluations,
                             loss_ratio=float(fpcs.loss.mean() / grid.loss.mean()),
                             time_ratio=t_fpcs / t_grid, fpcs_seconds=t_fpcs,
                             grid_seconds=t_grid))
    return rows


def markdown(acc: List[Dict], grid: List[Dict], bits_list) -> str:
    lines = []
    for case in dict.fromkeys(r['case'] for r in acc):
        lines.append(f'\n**{case}** (MSE of the quantized tensor / cosine of the layer output)\n')
        lines.append('| method | ' + ' | '.join(f'{b}-bit' for b in bits_list) + ' |')
        lines.append('|---|' + '---|' * len(bits_list))
        for method in dict.fromkeys(r['method'] for r in acc if r['case'] == case):
            cells = []
            for b in bits_list:
                r = next(r for r in acc
                         if r['case'] == case and r['method'] == method and r['bits'] == b)
                cells.append(f"{r['mse']:.2e} / {r['cosine']:.4f}")
            lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    lines.append('\n**FPCS vs dense grid** (Swin fc2 weight, per channel, layer-output MSE)\n')
    lines.append('| bits | FPCS evals | grid evals | loss FPCS/grid | time FPCS/grid |')
    lines.append('|---|---|---|---|---|')
    for r in grid:
        lines.append(f"| {r['bits']} | {r['fpcs_evals']} | {r['grid_evals']} | "
                     f"{r['loss_ratio']:.4f} | {r['time_ratio']:.3f} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bits', type=int, nargs='+', default=[3, 4, 5, 6, 8])
    parser.add_argument('--search-rows', type=int, default=1024,
                        help='rows (tokens / attention maps) each search scores')
    parser.add_argument('--out', default='benchmarks/results/quantizer_benchmark.json')
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print('capturing activations ...', flush=True)
    cases = build_cases(args.search_rows)
    acc = accuracy_table(cases, args.bits)
    grid = fpcs_vs_grid(cases)
    table = markdown(acc, grid, args.bits)
    print(table)
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(accuracy=acc, fpcs_vs_grid=grid), f, indent=1)
    with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
        f.write(table + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
