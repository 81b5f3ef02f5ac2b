"""Convert a Swin detection checkpoint from the mmdet 2.x key layout of the Swin Transformer
object-detection repository (``backbone.layers.0.blocks.0.attn.qkv.weight``) to mmdet 3.x
(``backbone.stages.0.blocks.0.attn.w_msa.qkv.weight``).

    python tools/convert_swin_det_checkpoint.py SRC.pth DST.pth

Only backbone keys change (the neck and heads of Cascade / Mask R-CNN keep their names);
PatchMerging weights are re-ordered for mmdet's unfold-based merging.
"""
import argparse
import os
from collections import OrderedDict
from typing import Dict

import torch
from mmdet.models.backbones.swin import swin_converter

from mmq.float_checkpoint import is_plain, load_checkpoint_without_code


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """mmdet 2.x Swin detector keys -> mmdet 3.x keys."""
    if any(k.startswith('backbone.stages.') for k in state_dict):
        raise ValueError('this checkpoint is already in the mmdet 3.x layout '
                         '(backbone.stages.*): nothing to convert.')
    if not any(k.startswith('backbone.layers.') for k in state_dict):
        raise ValueError('no backbone.layers.* keys: this is not a Swin detection checkpoint '
                         'in the mmdet 2.x layout.')
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                           if k.startswith('backbone.'))
    out = OrderedDict(swin_converter(backbone))
    for k, v in state_dict.items():
        if not k.startswith('backbone.'):
            out[k] = v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint in the mmdet 2.x Swin layout')
    parser.add_argument('dst', help='where to write the mmdet 3.x checkpoint')
    args = parser.parse_args()
    if not os.path.isfile(args.src):
        raise SystemExit(f'{args.src!r} does not exist.')
    try:  # a downloaded file: read without running code from it
        ckpt, _ = load_checkpoint_without_code(args.src)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    state_dict = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state_dict, dict):
        raise SystemExit(f'{args.src!r} holds no state dict.')
    meta = ckpt.get('meta', {}) if 'state_dict' in ckpt else {}
    meta = {k: v for k, v in meta.items() if is_plain(v)} if isinstance(meta, dict) else {}
    meta['mmq_converted_from'] = os.path.basename(args.src)
    converted = convert_state_dict(state_dict)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=converted, meta=meta), args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors')


if __name__ == '__main__':
    main()
