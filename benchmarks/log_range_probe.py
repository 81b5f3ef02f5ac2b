"""Do the post-GELU log quantizers clip DINOv2's high-norm tokens? A probe on a calibrated
``dinov2`` detector (an accuracy-benchmark row's saved stage), evaluated by mmdet's metric.

    python benchmarks/log_range_probe.py --row WORK_DIR [--state WORK_DIR/stage_calibrate.pth]
        [--images 32] [--mode none|max]

DINOv2 makes a few high-norm tokens in its early blocks, with a few post-GELU values far above
the rest; the searched AdaLog scale (the top of its grid) clips them (block 2: 14.9 on 32
training images against a scale of 2.7-3.6). Does that clip cost AP?
``--mode max`` raises each post-GELU log quantizer's scale (the grid's top; the searched base
is kept) to the largest ``x + shift`` seen on ``--images`` training images (float model), so
nothing is clipped; ``--mode none`` evaluates the state as saved. Prints each changed
quantizer and the box / mask AP on the shapes val set; one thread.
"""

import torch

from dinov2_demo import run_state_probe
from mmq.models.transform import set_quant_enabled
from mmq.quantizers.log_quantizer import LogQuantizer


def raise_to_max(model, images) -> None:
    """Each shifted (post-GELU) log quantizer's scale up to the float model's largest input."""
    qs = {name: m for name, m in model.backbone.named_modules()
          if isinstance(m, LogQuantizer) and m.shift != 0 and m.fixed_scale is None}
    peak = {name: 0.0 for name in qs}

    def record(name):
        def hook(module, args):
            peak[name] = max(peak[name], float((args[0] + module.shift).max()))
        return hook

    handles = [q.register_forward_pre_hook(record(name)) for name, q in qs.items()]
    set_quant_enabled(model, False)
    try:
        with torch.no_grad():
            for image in images:
                model.backbone(image)
    finally:
        set_quant_enabled(model, True)
        for h in handles:
            h.remove()
    for name, q in qs.items():
        scale = float(q.scale)
        if peak[name] > scale:
            q.set_params(int(q.q), peak[name])
            print(f'{name}: scale {scale:.3f} -> {peak[name]:.3f}', flush=True)


def main() -> None:
    run_state_probe(__doc__, 'max', raise_to_max, 'mmq_log_range_probe_')


if __name__ == '__main__':
    main()
