"""Accuracy benchmark: box / mask AP of the demo detectors, float and quantized by each method
at W3A3 / W4A4 / W6A6, with calibration time and peak memory per row.

    python benchmarks/accuracy_benchmark.py [--detectors swin vit] [--bits 3 4 6]
        [--methods ...] [--out benchmarks/results/accuracy]

Every row is one ``tools/quantize.py`` run (``tools/test.py`` for float) in its own process
and work dir, so peak memory is per row; a row whose ``metrics.json`` exists for the same
command and checkpoint (sha256) is not run again (an interrupted benchmark continues where
it stopped). A ``+rec`` row starts from the ``stage_calibrate.pth`` of the same row
without ``+rec`` (the same calibration and MR), or of another ``+rec`` row made from it, so
its time is the reconstruction stage alone; a calibrate-only row evaluates such a saved stage
instead of calibrating again. Writes ``accuracy.json``, ``accuracy.md`` and ``accuracy.png``
to ``--out``.
"""
import argparse
import fcntl
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DETECTORS = dict(
    swin=('configs/demo/mask-rcnn_swin-demo_fpn_shapes.py',
          'checkpoints/demo/mask-rcnn_swin-demo_shapes.pth'),
    vit=('configs/demo/mask-rcnn_vit-demo_fpn_shapes.py',
         'checkpoints/demo/mask-rcnn_vit-demo_shapes.pth'),
    dinov2=('configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py',
            'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth'))
DEFAULT_DETECTORS = ['swin', 'vit']  # dinov2 rows cost minutes each: ask for them by name
# Short CPU schedules of the APHQ stages (published: MR 1000+ steps, reconstruction 20,000
# steps x 32 images per block).
MR_DEMO = dict(iters=100, batch=512, rows=4096, lr=1e-3, aph_images=8)
# Rounding variables move at most ~round_lr per Adam step: published 1e-3 x 20,000 steps; the
# short schedule keeps the product (300 x 0.1 = 30) so that every h(V) settles at 0 or 1.
# MR started from the least-squares fc2 (beyond the published start from the GELU weights):
# more rows for the fit, a smaller learning rate for the steps after it (benchmarks/mr_fidelity.py).
MR_LSTSQ = dict(MR_DEMO, rows=16384, lr=1e-4, fc2_init='lstsq')
REC_DEMO = dict(iters=300, batch=2, lr=4e-5, round_lr=0.1, aph_images=8)
# Three times the demo steps at the same round_lr x iters product (30).
REC_LONG = dict(REC_DEMO, iters=900, round_lr=0.1 / 3)
# Three times the long schedule again (same round_lr x iters product): does reconstruction
# still gain from more steps?
REC_XL = dict(REC_DEMO, iters=2700, round_lr=0.1 / 9)
UNIFORM = dict(softmax='uniform', gelu='uniform')
TOKENS = ['ln_input', 'proj_input', 'qk']
TOKEN_SETS = dict(tokens=TOKENS, tokens4=TOKENS + ['post_gelu'],
                  tokens5=TOKENS + ['post_gelu', 'other'],
                  tokens7=TOKENS + ['post_gelu', 'other', 'v', 'post_softmax'])
METHODS = {
    'uniform-minmax': dict(UNIFORM, calibrator='minmax'),
    'uniform-percentile': dict(UNIFORM, calibrator='percentile'),
    'adalog-fpcs': dict(),
    'adalog-fpcs+mr': dict(stages=['mr', 'calibrate'], mr=MR_DEMO),
    'adalog-fpcs+rec': dict(stages=['calibrate', 'reconstruct'], reconstruct=REC_DEMO),
    'adalog-fpcs+mr+rec': dict(stages=['mr', 'calibrate', 'reconstruct'], mr=MR_DEMO,
                               reconstruct=REC_DEMO),
    'adalog-fpcs+rec-logscale': dict(stages=['calibrate', 'reconstruct'],
                                     reconstruct=dict(REC_DEMO, learn_log_scales=True)),
    # Three times the demo reconstruction steps (same round_lr x iters product): does the short
    # schedule limit the W4A4 result?
    'adalog-fpcs+rec-long': dict(stages=['calibrate', 'reconstruct'], reconstruct=REC_LONG),
    # Activation ablation (issue: which 4-bit activation role costs most): 8-bit weights, or
    # one activation role at 8 bits.
    'adalog-fpcs-w8': dict(w_bits=8),
    # W8A4 with block reconstruction: can learned activation scales recover the 4-bit
    # activations' loss (starts from the W8A4 calibrate-only state)?
    'adalog-fpcs-w8+rec': dict(w_bits=8, stages=['calibrate', 'reconstruct'],
                               reconstruct=REC_DEMO),
    # Outlier-aware row sampling: a quarter of the search rows are the largest tokens.
    'adalog-fpcs-outliers': dict(search_outliers=0.25),
    # Attention-output reparameterization: per-channel ranges for proj's input (beyond the
    # published methods).
    'adalog-fpcs-projrep': dict(proj_reparam=True),
    'adalog-fpcs-projrep+rec': dict(proj_reparam=True, stages=['calibrate', 'reconstruct'],
                                    reconstruct=REC_DEMO),
    # Four times the search rows / attention maps (the published code scores every token).
    'adalog-fpcs-rows1024': dict(search_rows=1024, search_windows=128),
    # The published number of alternating search rounds (default 1).
    'adalog-fpcs-rounds3': dict(rounds=3),
    # LayerNorm reparameterization from searched (not min / max) per-channel ranges.
    'adalog-fpcs-lnsearch': dict(ln_reparam_ranges='search'),
    # Dynamic per-token scales for the post-LayerNorm, proj and q / k inputs (beyond the
    # published static scales), at W4A4, W8A4 and with reconstruction.
    'adalog-fpcs-tokens': dict(token_roles=TOKENS),
    'adalog-fpcs-w8-tokens': dict(w_bits=8, token_roles=TOKENS),
    'adalog-fpcs-w8-tokens-full': dict(w_bits=8, token_roles=TOKENS, token_clip='full'),
    # The other half of the split: 8-bit activations with the row's weight width (W6A8 on a
    # W6A6 row): does W6A6 lose more to its weights or to its activations?
    'adalog-fpcs-a8-tokens': dict(a_bits=8, token_roles=TOKENS),
    'adalog-fpcs-w8-tokens+rec': dict(w_bits=8, token_roles=TOKENS,
                                      stages=['calibrate', 'reconstruct'], reconstruct=REC_DEMO),
    'adalog-fpcs-tokens+rec': dict(token_roles=TOKENS, stages=['calibrate', 'reconstruct'],
                                   reconstruct=REC_DEMO),
    'adalog-fpcs-tokens+rec-long': dict(token_roles=TOKENS, stages=['calibrate', 'reconstruct'],
                                        reconstruct=REC_LONG),
    # The APHQ row (MR, then calibration, then reconstruction) with the best schedule
    # found: least-squares MR start, per-token scales, the long reconstruction schedule.
    'adalog-fpcs-tokens+mr+rec-long': dict(token_roles=TOKENS,
                                           stages=['mr', 'calibrate', 'reconstruct'],
                                           mr=MR_LSTSQ, reconstruct=REC_LONG),
    'adalog-fpcs-tokens+mr+rec-xl': dict(token_roles=TOKENS,
                                         stages=['mr', 'calibrate', 'reconstruct'],
                                         mr=MR_LSTSQ, reconstruct=REC_XL),
    # The same with the RoI box heads reconstructed after the neck (beyond the published
    # pipeline; needs '@detector').
    'adalog-fpcs-tokens+mr+rec-long-boxhead': dict(token_roles=TOKENS,
                                                   stages=['mr', 'calibrate', 'reconstruct'],
                                                   mr=MR_LSTSQ,
                                                   reconstruct=dict(REC_LONG, box_head=True)),
    # Error-compensated (GPTQ) weight rounding on the searched grids (beyond the published
    # methods, which round to nearest before reconstruction).
    'adalog-fpcs-gptq': dict(weight_rounding='gptq'),
    'adalog-fpcs-tokens-gptq': dict(token_roles=TOKENS, weight_rounding='gptq'),
    # ... fitted to the float output on the unquantized inputs (the weights also absorb the
    # 4-bit inputs' error), at W4A4 and W8A4.
    # Reconstruction started from the GPTQ codes (reconstruct.rounding_init='calibrated').
    'adalog-fpcs-tokens-gptq+rec': dict(token_roles=TOKENS, weight_rounding='gptq',
                                        stages=['calibrate', 'reconstruct'],
                                        reconstruct=dict(REC_DEMO, rounding_init='calibrated')),
    'adalog-fpcs-tokens-gptqf': dict(token_roles=TOKENS, weight_rounding='gptq',
                                     gptq_target='float'),
    'adalog-fpcs-w8-tokens-gptqf': dict(w_bits=8, token_roles=TOKENS, weight_rounding='gptq',
                                        gptq_target='float'),
    # Per-token scales per group of 32 / 16 / 8 features (block scaling along the reduction
    # axis, as the MX formats; beyond the published methods) for the three token roles
    # ('tokens'), with fc2's input ('tokens4', in place of the static shifted AdaLog),
    # every other input too ('tokens5': the pyramid's convolutions per pixel) and both
    # operands of A @ v ('tokens7': v per channel column, A per query row, in groups of
    # tokens / keys, in place of the static per-head v and the post-Softmax AdaLog); 8-bit weights
    # ('-w8'), GPTQ ('-gptq'; before '-gN' on the three-role rows, after it otherwise).
    **{f'adalog-fpcs{w}-{t}' + (f'{g}-g{n}' if t == 'tokens' else f'-g{n}{g}'): dict(
        token_roles=roles, token_group_size=n, **(dict(w_bits=8) if w else {}),
        **(dict(weight_rounding='gptq') if g else {}))
       for t, roles in TOKEN_SETS.items() for w in ('', '-w8') for g in ('', '-gptq')
       for n in (8, 16, 32)},
    # ... with reconstruction (the demo and long schedules), the APHQ row and, with
    # '@detector', the RoI box heads reconstructed after the neck ('-boxhead'); '-fzp': the
    # float zero point (below).
    **{f'adalog-fpcs-{t}-g{n}{z}{stages}': dict(
        token_roles=roles, token_group_size=n,
        **(dict(token_zero_point='float') if z else {}),
        stages=['mr', 'calibrate', 'reconstruct'] if 'mr' in stages else [
            'calibrate', 'reconstruct'],
        reconstruct=dict(REC_LONG if 'long' in stages else REC_DEMO,
                         **(dict(box_head=True) if 'boxhead' in stages else {})),
        **(dict(mr=MR_LSTSQ) if 'mr' in stages else {}))
       for t, roles in TOKEN_SETS.items() for n in (16, 32) for z in ('', '-fzp')
       for stages in ('+rec', '+rec-long', '+mr+rec-long', '+mr+rec-long-boxhead')},
    # ... with the attention-output reparameterization ('-projrep': proj's input channels
    # equalised before its token groups), the MLP's hidden channels sorted by RMS ('-sort':
    # mlp_channel_sort) and / or each token's (group's) grid from its clipped minimum to its
    # clipped maximum ('-fzp': token_zero_point='float', a real-valued offset in place of the
    # integer zero point).
    **{f'adalog-fpcs{w}-tokens7-g{n}{p}{o}{z}': dict(
        token_roles=TOKEN_SETS['tokens7'], token_group_size=n, proj_reparam=bool(p),
        mlp_channel_sort=bool(o), token_zero_point='float' if z else 'integer',
        **(dict(w_bits=8) if w else {}))
       for w in ('', '-w8') for n in (8, 16) for p in ('', '-projrep') for o in ('', '-sort')
       for z in ('', '-fzp') if p or o or z},
    **{f'adalog-fpcs-{role}8': dict(role_bits={role: 8})
       for role in ('ln_input', 'qk', 'v', 'post_softmax', 'proj_input', 'post_gelu', 'other')},
}
# Suffixes: '@detector' quantizes the FPN / RPN / RoI heads too (scope='detector'); '#sN'
# draws the calibration images and row samples with seed N (rerun noise); '#nN' calibrates
# (and reconstructs) on N images instead of --num-images (e.g. '+rec#s1#n256').


def split_suffixes(method: str):
    """(method without '#' suffixes, seed or None, number of images or None)."""
    head, *tails = method.split('#')
    seed = num_images = None
    for tail in tails:
        if tail[:1] not in ('s', 'n') or not tail[1:].isdigit():
            raise SystemExit(f'bad suffix #{tail} in {method!r}: use #sN (seed) or #nN (images)')
        if tail[0] == 's':
            seed = int(tail[1:])
        else:
            num_images = int(tail[1:])
    return head, seed, num_images


def split_method(method: str):
    """(base method, scope, seed, number of images) of a method name with optional
    suffixes."""
    method, seed, num_images = split_suffixes(method)
    scope = 'backbone'
    if method.endswith('@detector'):
        method, scope = method[:-len('@detector')], 'detector'
    if method not in METHODS:
        raise SystemExit(f'unknown method {method!r}; known: {list(METHODS)} '
                         '(+ @detector, #sN, #nN)')
    return method, scope, seed, num_images


def calibration_row(method: str) -> str:
    """The row whose ``stage_calibrate.pth`` a ``+rec`` row starts from: the same method without
    ``+rec`` and what follows it, keeping the scope, seed and image-count suffixes
    (``adalog-fpcs+rec@detector#s1`` -> ``adalog-fpcs@detector#s1``)."""
    name, _, _ = method.partition('#')
    head, _, tail = name.partition('+rec')
    if '@detector' in tail:
        head += '@detector'
    return head + method[len(name):]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--detectors', nargs='+', default=DEFAULT_DETECTORS, choices=DETECTORS)
    parser.add_argument('--bits', nargs='+', type=int, default=[3, 4, 6], choices=[3, 4, 6, 8])
    parser.add_argument('--methods', nargs='+',
                        default=[m for m in METHODS if m.startswith(('uniform', 'adalog-fpcs+'))]
                        + ['adalog-fpcs'],
                        help='methods of METHODS, optionally suffixed @detector and/or #sN')
    parser.add_argument('--stage-bits', nargs='+', type=int, default=[3, 4],
                        help='bit widths the +mr / +rec methods run at (minutes each on a CPU)')
    parser.add_argument('--reconstruct-detectors', nargs='+', default=list(DETECTORS),
                        choices=DETECTORS, help='detectors the +rec methods run on')
    parser.add_argument('--num-images', type=int, default=32, help='calibration images')
    parser.add_argument('--out', default=osp.join(ROOT, 'benchmarks/results/accuracy'))
    parser.add_argument('--force', action='store_true', help='rerun rows that have results')
    return parser.parse_args()


def row_quant_cfg(bits: int, method: str) -> dict:
    """The ``quant_cfg`` a row of ``method`` (with its suffixes) runs at ``bits``."""
    base, scope, seed, _ = split_method(method)
    quant = dict(w_bits=bits, a_bits=bits, softmax='adalog', gelu='adalog', calibrator='fpcs',
                 scope=scope, **({} if seed is None else dict(seed=seed)))
    quant.update(METHODS[base])
    return quant


def _row_config(path: str, detector_cfg: str, bits: int, method: str, num_images: int) -> int:
    """Write the row's config; returns its number of calibration images."""
    _, _, seed, images = split_method(method)
    num_images = images or num_images
    quant = row_quant_cfg(bits, method)
    text = (f"_base_ = [{osp.join(ROOT, detector_cfg)!r},\n"
            f"          {osp.join(ROOT, 'configs/_base_/quant/w4a4_adalog.py')!r}]\n"
            f'quant_cfg = dict(_delete_=True, **{quant!r})\n')
    if seed is not None or images is not None:
        text += (f"custom_hooks = [dict(type='mmq.QuantCalibrationHook', "
                 f'num_images={num_images}, seed={seed or 0})]\n')
    _write_if_changed(path, text)
    return num_images


def _calibrated_stage(det_dir: str, prefix: str, calibration: str, row: str):
    """The ``stage_calibrate.pth`` of a row made from the calibration ``calibration`` (same
    method, MR, scope, seed and images), never ``row``'s own: the calibrate-only row's, else
    that of a ``+rec`` row started from it; None if none has been saved."""
    own = osp.join(det_dir, prefix + calibration, 'stage_calibrate.pth')
    if prefix + calibration != row and osp.isfile(own):
        return own
    for other in sorted(os.listdir(det_dir)) if osp.isdir(det_dir) else []:
        stage = osp.join(det_dir, other, 'stage_calibrate.pth')
        if (other.startswith(prefix) and other != row and '+rec' in other
                and osp.isfile(stage) and calibration_row(other[len(prefix):]) == calibration):
            return stage
    return None


def _write_if_changed(path: str, text: str) -> bool:
    if osp.isfile(path) and open(path).read() == text:
        return False
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return True


def _run(cmd: list, work_dir: str, label: str, force: bool, checkpoint_key: str) -> dict:
    """Run one row; ``checkpoint_key`` (its checkpoint's sha256) is part of the cache key, so
    a retrained detector reruns its rows."""
    metrics_path = osp.join(work_dir, 'metrics.json')
    cmd_path = osp.join(work_dir, 'command.txt')
    changed = _write_if_changed(cmd_path, ' '.join(cmd) + f'\n# {checkpoint_key}\n')
    if osp.isfile(metrics_path) and not force and not changed:
        print(f'{label}: done before (delete {metrics_path} or pass --force to rerun)', flush=True)
    else:
        for stale in ('metrics.json', 'quantized_state.partial.pth') if changed else (
                'metrics.json', ):
            if osp.isfile(osp.join(work_dir, stale)):
                os.remove(osp.join(work_dir, stale))  # a partial state of another config
        print(f'{label}: running (log {osp.join(work_dir, "run.log")})', flush=True)
        start = time.perf_counter()
        with open(osp.join(work_dir, 'run.log'), 'w') as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(osp.join(work_dir, 'run.log')) as f:
                tail = f.read()[-3000:]
            raise SystemExit(f'{label} failed (exit {proc.returncode}); log tail:\n{tail}')
        print(f'{label}: finished in {time.perf_counter() - start:.0f} s', flush=True)
    with open(metrics_path) as f:
        result = json.load(f)
    report = osp.join(work_dir, 'calibration_report.json')
    if osp.isfile(report):
        with open(report) as f:
            rep = json.load(f)
        result['calibration_seconds'] = rep['seconds']
        result['stage_seconds'] = {k: v['seconds'] for k, v in rep.get('stages', {}).items()}
    return result


def _row(detector: str, bits, method: str, result: dict) -> dict:
    m = result['metrics']
    return dict(detector=detector, bits=bits, method=method,
                bbox_mAP=m.get('coco/bbox_mAP'), segm_mAP=m.get('coco/segm_mAP'),
                calibration_seconds=result.get('calibration_seconds'),
                stage_seconds=result.get('stage_seconds'), peak_rss_mb=result['peak_rss_mb'],
                wall_seconds=result['seconds'])


def _merge(path: str, rows: list) -> list:
    """``rows`` plus the rows of an earlier ``accuracy.json`` that this run did not redo (a run
    of one detector keeps the others' rows), ordered by detector, bits, method."""
    key = lambda r: (r['detector'], r['bits'], r['method'])  # noqa: E731
    merged = {}
    if osp.isfile(path):
        with open(path) as f:
            merged = {key(r): r for r in json.load(f)['rows']}
    merged.update({key(r): r for r in rows})
    order = list(DETECTORS)
    return sorted(merged.values(),
                  key=lambda r: (order.index(r['detector']) if r['detector'] in order else 99,
                                 r['bits'] or 0, r['method']))


def _save(path: str, rows: list) -> list:
    """Merge ``rows`` into ``path`` under an exclusive lock and replace the file atomically, so
    benchmark processes running side by side (one per detector or method list) keep each
    other's rows."""
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = _merge(path, rows)
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(rows=rows, methods=METHODS, command=' '.join(sys.argv)), f, indent=1)
        os.replace(tmp, path)
    return rows


def _markdown(rows: list) -> str:
    lines = ['| detector | bits | method | box AP | mask AP | box / mask kept | calib. s | '
             'stages s | peak RSS MB |', '|---|---|---|---|---|---|---|---|---|']
    floats = {r['detector']: r for r in rows if r['bits'] is None}
    for r in rows:
        f = floats.get(r['detector'])
        kept = '-' if f is None or r['bits'] is None else (
            f"{r['bbox_mAP'] / max(f['bbox_mAP'], 1e-9):.0%} / "
            f"{r['segm_mAP'] / max(f['segm_mAP'], 1e-9):.0%}")
        bits = 'float' if r['bits'] is None else f"W{r['bits']}A{r['bits']}"
        calib = '-' if r['calibration_seconds'] is None else f"{r['calibration_seconds']:.0f}"
        stages = ' / '.join(f'{k} {v:.0f}' for k, v in (r['stage_seconds'] or {}).items())
        lines.append(f"| {r['detector']} | {bits} | {r['method']} | {r['bbox_mAP']:.3f} | "
                     f"{r['segm_mAP']:.3f} | {kept} | {calib} | {stages or '-'} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return '\n'.join(lines) + '\n'


def _plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    detectors = sorted({r['detector'] for r in rows})
    fig, axes = plt.subplots(2, len(detectors), figsize=(6 * len(detectors), 8), squeeze=False)
    for j, det in enumerate(detectors):
        for i, key in enumerate(('bbox_mAP', 'segm_mAP')):
            ax = axes[i][j]
            float_rows = [r for r in rows if r['detector'] == det and r['bits'] is None]
            if float_rows:
                ax.axhline(float_rows[0][key], color='k', ls='--', label='float')
            for method in METHODS:
                pts = sorted((r['bits'], r[key]) for r in rows
                             if r['detector'] == det and r['method'] == method)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', label=method)
            ax.set_title(f'{det}: {key}')
            ax.set_xlabel('bits (W = A)')
            ax.set_xticks(sorted({r['bits'] for r in rows if r['bits']} | {3, 4, 6}))
            top = max([r[key] for r in rows if r['detector'] == det] + [0.01])
            ax.set_ylim(0, top * 1.15)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    args = parse_args()
    for method in args.methods:
        split_method(method)  # an unknown method stops here, before any row runs
    os.makedirs(args.out, exist_ok=True)
    py = sys.executable
    if not osp.isfile(osp.join(ROOT, 'data/shapes/annotations/instances_val.json')):
        print('generating the shapes dataset (data/shapes), as make demo does', flush=True)
        subprocess.run([py, 'tools/generate_shapes_dataset.py', 'data/shapes'], cwd=ROOT,
                       check=True)
    rows = []
    jobs = [(d, None, 'float') for d in args.detectors]
    jobs += [(d, b, m) for d in args.detectors for b in args.bits for m in args.methods
             if '+' not in m or (b in args.stage_bits and ('rec' not in m
                                                           or d in args.reconstruct_detectors))]
    checkpoint_keys = {}
    for det in args.detectors:
        ckpt = DETECTORS[det][1]
        if not osp.isfile(osp.join(ROOT, ckpt)):
            raise SystemExit(f'{ckpt} is missing: the demo checkpoints are committed with the '
                             'repository (see checkpoints/demo/README.md).')
        with open(osp.join(ROOT, ckpt), 'rb') as f:
            checkpoint_keys[det] = f'{ckpt} sha256 {hashlib.sha256(f.read()).hexdigest()}'
    for k, (det, bits, method) in enumerate(jobs):
        cfg_file, ckpt = DETECTORS[det]
        name = 'float' if bits is None else f'w{bits}a{bits}_{method}'
        work_dir = osp.join(args.out, det, name)
        os.makedirs(work_dir, exist_ok=True)
        label = f'[{k + 1}/{len(jobs)}] {det} {name}'
        if bits is None:
            cmd = [py, 'tools/test.py', cfg_file, ckpt, '--work-dir', work_dir]
        else:
            row_cfg = osp.join(work_dir, 'config.py')
            images = _row_config(row_cfg, cfg_file, bits, method, args.num_images)
            cmd = [py, 'tools/quantize.py', row_cfg, ckpt, '--work-dir', work_dir,
                   '--num-images', str(images)]
            if '+rec' in method or '+' not in method:
                # Same calibration (and MR) as another row: start from its saved stage.
                stage = _calibrated_stage(osp.join(args.out, det), f'w{bits}a{bits}_',
                                          calibration_row(method), name)
                if stage is not None:
                    cmd += ['--resume-from', stage]
        row = _row(det, bits, method, _run(cmd, work_dir, label, args.force, checkpoint_keys[det]))
        print(f"{label}: box AP {row['bbox_mAP']:.3f}, mask AP {row['segm_mAP']:.3f}",
              flush=True)
        rows.append(row)
        rows = _save(osp.join(args.out, 'accuracy.json'), rows)
    with open(osp.join(args.out, 'accuracy.md'), 'w') as f:
        f.write(_markdown(rows))
    _plot(rows, osp.join(args.out, 'accuracy.png'))
    print(_markdown(rows))


if __name__ == '__main__':
    main()
