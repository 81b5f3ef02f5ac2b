"""How well MLP Reconstruction's ReLU MLPs reproduce the float GELU model, per MR schedule,
on the DINOv2 demo detector (no quantization).

    python benchmarks/mr_fidelity.py [--images 64] [--heldout 8]
                                     [--variants '{"name": {MR option: value}}']

The detector (``configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py`` with the committed
checkpoint) runs the 'mr' stage alone (:func:`mmq.calibration.mlp_reconstruction`) on
``--images`` seeded training images with each variant's ``quant_cfg.mr`` options. Printed per
variant: the stage's time, the SQNR of the backbone's outputs (the ViTDet pyramid) after MR
against the float GELU model on ``--heldout`` further training images the MR never saw, the
same at each ViT block's output (the residual stream), and the per-MLP weighted MR loss at
the start and end of training. MR's own report (``output_sqnr_db``) measures the detector's
RPN outputs on the first MR images instead.
"""
import argparse
import copy
import json
import os.path as osp
import sys
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py'
CHECKPOINT = 'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth'
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
from accuracy_benchmark import MR_DEMO, MR_LSTSQ  # noqa: E402

VARIANTS = {
    'demo schedule (from the GELU weights)': MR_DEMO,
    'least-squares fc2 start + steps': MR_LSTSQ,
}


def _runner():
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, CONFIG))
    cfg.work_dir = osp.join(ROOT, 'work_dirs', 'mr_fidelity')
    cfg.load_from = osp.join(ROOT, CHECKPOINT)
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    return runner


def _outputs(model, images) -> tuple:
    """(backbone outputs, per block outputs) of ``model`` on ``images``, flattened per image."""
    blocks = model.backbone.vit.blocks
    per_block = [[] for _ in blocks]
    hooks = [b.register_forward_hook(
        lambda mod, args, out, k=k: per_block[k].append(out.detach().flatten()))
        for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            final = [torch.cat([o.flatten() for o in model.backbone(img)]) for img in images]
    finally:
        for h in hooks:
            h.remove()
    return final, per_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=64)
    parser.add_argument('--heldout', type=int, default=8)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--variants', type=json.loads, default=VARIANTS,
                        help='JSON {name: quant_cfg.mr options}')
    args = parser.parse_args()
    from mmq.calibration.aph import task_for
    from mmq.calibration.mlp_reconstruction import mlp_reconstruction
    from mmq.config.aphq_options import MROptions, build_options
    from mmq.hooks.quant_calibration_hook import QuantCalibrationHook
    from mmq.quantizers.objectives import sqnr_db
    torch.set_num_threads(args.threads)
    runner = _runner()
    base = runner.model.eval()
    loader = QuantCalibrationHook(num_images=args.images + args.heldout).calibration_loader(
        runner)
    images = [base.data_preprocessor(batch, False)['inputs'] for batch in loader]
    train, heldout = images[:args.images], images[args.images:]
    ref_final, ref_blocks = _outputs(base, heldout)
    print(f'DINOv2 demo detector, MR on {len(train)} training images, SQNR on {len(heldout)} '
          'held-out images (dB)')
    for name, options in args.variants.items():
        model = copy.deepcopy(base)
        opts = build_options(MROptions, options, 'mr')
        forward, task_loss, eps = task_for(model, opts.eps)
        start = time.perf_counter()
        report = mlp_reconstruction(model, model.backbone, forward, task_loss, eps, train, opts)
        seconds = time.perf_counter() - start
        final, blocks = _outputs(model, heldout)
        mean = lambda pairs: sum(sqnr_db(a, b) for a, b in pairs) / len(heldout)  # noqa: E731
        print(f'\n{name}: {json.dumps(options)}')
        print(f'  {seconds:.0f} s; backbone outputs {mean(zip(ref_final, final)):.2f} dB held '
              f'out (RPN outputs on MR images: {report["output_sqnr_db"]:.2f} dB)')
        print('  block outputs: ' + ' '.join(
            f'{mean(zip(r, o)):.1f}' for r, o in zip(ref_blocks, blocks)))
        print('  MR loss per MLP (start -> end): ' + ', '.join(
            f"{m['loss_start']:.3g} -> {m['loss_end']:.3g}" for m in report['mlps']), flush=True)


if __name__ == '__main__':
    main()
