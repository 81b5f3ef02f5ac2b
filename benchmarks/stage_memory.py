"""Peak process memory of each APHQ stage on the dinov2 testbed, through ``tools/quantize.py``
(the real workflow: dataloader, activation store with its default 2 GB budget, evaluation).

    python benchmarks/stage_memory.py [--images 1024] [--work-dir work_dirs/stage_memory]

Runs MR, calibration and reconstruction with the accuracy rows' options (least-squares MR
start, per-token scales) but schedules cut to a few steps, uniform MinMax activation ranges
instead of the FPCS search and no AdaLog: the steps and the search do not grow with the
images, the passes and what is kept of them do. Samples the quantize process's resident set
every second and prints its peak in each stage (stages as the log reports them) and overall.
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DETECTOR = ('configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py',
            'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth')
QUANT = dict(w_bits=4, a_bits=4, calibrator='minmax', softmax='uniform', gelu='uniform',
             scope='backbone', stages=['mr', 'calibrate', 'reconstruct'],
             token_roles=['ln_input', 'proj_input', 'qk'],
             mr=dict(iters=2, batch=512, rows=16384, lr=1e-4, fc2_init='lstsq', aph_images=8),
             reconstruct=dict(iters=2, batch=2, lr=4e-5, round_lr=0.03, aph_images=8))
STAGE_DONE = re.compile(r'\[mmq\] stage (\w+) done')


def rss_mb(pid: int) -> float:
    try:
        with open(f'/proc/{pid}/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024
    except (OSError, StopIteration):
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=1024)
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/stage_memory'))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    for name in os.listdir(args.work_dir):  # a fresh run, never a resumed one
        if name.startswith('stage_') or name == 'quantized_state.pth':
            os.remove(osp.join(args.work_dir, name))
    cfg = osp.join(args.work_dir, 'config.py')
    with open(cfg, 'w') as f:
        f.write(f"_base_ = [{osp.join(ROOT, DETECTOR[0])!r},\n"
                f"          {osp.join(ROOT, 'configs/_base_/quant/w4a4_adalog.py')!r}]\n"
                f'quant_cfg = dict(_delete_=True, **{QUANT!r})\n')
    log_path = osp.join(args.work_dir, 'run.log')
    cmd = [sys.executable, 'tools/quantize.py', cfg, DETECTOR[1], '--work-dir', args.work_dir,
           '--num-images', str(args.images)]
    print('$', ' '.join(cmd), flush=True)
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peaks, stage, seen = {}, 'mr', 0
        while proc.poll() is None:
            with open(log_path) as f:
                text = f.read()
            done = STAGE_DONE.findall(text)
            if len(done) > seen:
                seen = len(done)
                order = ['mr', 'calibrate', 'reconstruct', 'evaluate']
                stage = order[min(len(order) - 1, order.index(done[-1]) + 1)]
            peaks[stage] = max(peaks.get(stage, 0.0), rss_mb(proc.pid))
            time.sleep(1)
    if proc.returncode:
        raise SystemExit(f'tools/quantize.py failed ({proc.returncode}); see {log_path}')
    print(f'{args.images} images at 256x320, {time.time() - start:.0f} s; peak RSS per stage '
          '(MB): ' + ', '.join(f'{k} {v:.0f}' for k, v in peaks.items())
          + f'; overall {max(peaks.values()):.0f}', flush=True)


if __name__ == '__main__':
    main()
