"""Strip a training checkpoint to a small, weights-only state dict for release.

    python tools/publish_checkpoint.py IN.pth OUT.pth [--fp16]

Keeps ``state_dict`` (optionally stored as float16: half the size; loading casts back to
float32, so float and quantized evaluations both see the same rounded weights) and a short
``meta`` (epoch, iteration, mmdet version); prints the sha256 of the result.
"""
import argparse
import hashlib
import os

import torch

from mmq.float_checkpoint import load_checkpoint_without_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--fp16', action='store_true', help='store float tensors as float16')
    args = parser.parse_args()
    # Training checkpoints hold mmengine bookkeeping objects: read without running them.
    ckpt, _ = load_checkpoint_without_code(args.src)
    state = ckpt.get('state_dict', ckpt)
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    meta = meta if isinstance(meta, dict) else {}
    keep = {k: meta[k] for k in ('epoch', 'iter', 'mmdet_version', 'seed') if k in meta}
    keep = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in keep.items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=state, meta=keep), args.dst)
    with open(args.dst, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f'{digest}  {os.path.basename(args.dst)}  ({os.path.getsize(args.dst) / 1e6:.1f} MB, '
          f'{sum(v.numel() for v in state.values()) / 1e6:.2f} M values)')


if __name__ == '__main__':
    main()
