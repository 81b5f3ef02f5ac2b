"""Which quantized tensors of a calibrated ``dinov2`` detector cost the most: each role's
quantizers switched back to float in turn, the backbone's pyramid features compared with
the float model's on held-out images.

    python benchmarks/activation_role_sensitivity.py [--state WORK_DIR/stage_calibrate.pth]

A seconds-long proxy for the accuracy benchmark's per-role rows (``adalog-fpcs-<role>8``,
which recalibrate at 8 bits and evaluate AP, about 25 minutes each here): it removes a
role's error entirely rather than shrinking it, and ignores how calibration would adapt.
Prints, per role, the features' SQNR (dB, mean over pyramid levels and images) with that
role float, and its gain over the fully quantized model; then each role's own quantization
SQNR (every quantizer's output against what it would pass in float mode, on the same images
in the fully quantized model: mean / min / max over the role's quantizers).
"""
from typing import Dict, List

import torch
from torch import nn

from dinov2_demo import state_backbone_args, training_images
from mmq.models.transform import quantizers
from mmq.quantizers.objectives import sqnr_db

STATE = 'benchmarks/results/accuracy/dinov2/w4a4_adalog-fpcs/stage_calibrate.pth'


def roles(backbone: nn.Module) -> Dict[str, List[nn.Module]]:
    """The quantizers of each role in the DINOv2 ``TimmViTDet`` (see QuantConfig.role_bits)."""
    found: Dict[str, List[nn.Module]] = {r: [] for r in (
        'weights', 'ln_input', 'qk', 'v', 'post_softmax', 'proj_input', 'post_gelu', 'other')}
    for block in backbone.vit.blocks:
        attn, mlp = block.attn, block.mlp
        found['ln_input'] += [attn.qkv.input_quantizer, mlp.fc1.input_quantizer]
        found['qk'] += [attn.qk_matmul.a_quantizer, attn.qk_matmul.b_quantizer]
        found['v'].append(attn.av_matmul.b_quantizer)
        found['post_softmax'].append(attn.av_matmul.a_quantizer)
        found['proj_input'].append(attn.proj.input_quantizer)
        found['post_gelu'].append(mlp.fc2.input_quantizer)
    named = {id(q) for qs in found.values() for q in qs}
    for name, module in backbone.named_modules():
        for attr in ('weight_quantizer', 'input_quantizer'):
            q = getattr(module, attr, None)
            if q is not None and id(q) not in named:
                found['weights' if attr == 'weight_quantizer' else 'other'].append(q)
    return found


def main() -> None:
    backbone, args = state_backbone_args(__doc__, STATE, images=8, threads=2)
    groups = roles(backbone)
    images = training_images(args.images, split='val')
    every = list(quantizers(backbone))

    def features_sqnr(float_ids) -> float:
        for q in every:
            q.enabled = id(q) not in float_ids
        values = []
        with torch.no_grad():
            for image, refs in zip(images, reference):
                values += [sqnr_db(r, o) for r, o in zip(refs, backbone(image))]
        return sum(values) / len(values)

    with torch.no_grad():
        for q in every:
            q.enabled = False
        reference = [backbone(image) for image in images]
    base = features_sqnr(set())
    print(f'{args.state}: all quantized {base:.2f} dB pyramid-feature SQNR '
          f'({args.images} val images)')
    groups['all activations'] = [q for role, qs in groups.items() if role != 'weights'
                                 for q in qs]
    for role, qs in groups.items():
        value = features_sqnr({id(q) for q in qs})
        print(f'  {role:15s} float ({len(qs):3d} quantizers): {value:6.2f} dB '
              f'({value - base:+.2f})', flush=True)
    own_sqnr(backbone, groups, images, every)


def own_sqnr(backbone: nn.Module, groups: Dict[str, List[nn.Module]], images: list,
             every: list) -> None:
    """Each activation role's quantizers' SQNR on their own inputs (all quantized)."""
    for q in every:
        q.enabled = True
    values: Dict[int, List[float]] = {}

    def hook(module, args, out):
        values.setdefault(id(module), []).append(sqnr_db(module.float_path(args[0]), out))

    handles = [q.register_forward_hook(hook) for role, qs in groups.items()
               if role not in ('weights', 'all activations') for q in qs]
    with torch.no_grad():
        for image in images:
            backbone(image)
    for h in handles:
        h.remove()
    print('own quantization SQNR per role (dB over its quantizers: mean / min / max)')
    for role, qs in groups.items():
        if role in ('weights', 'all activations'):
            continue
        per_q = [sum(values[id(q)]) / len(values[id(q)]) for q in qs if id(q) in values]
        print(f'  {role:15s} {sum(per_q) / len(per_q):6.2f} / {min(per_q):6.2f} / '
              f'{max(per_q):6.2f}', flush=True)


if __name__ == '__main__':
    main()
