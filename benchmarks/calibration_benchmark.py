"""Calibration cost on a full-size detector: the stock Swin-T Mask R-CNN (random weights),
generated shape images at 800x1333, W4A4 AdaLog + FPCS.

    python benchmarks/calibration_benchmark.py [--images 32] [--height 800 --width 1333]
        [--budget-gb 2] [--rows 512 --windows 64 --rounds 1] [--reconstruct-iters 10]
        [--out work_dirs/calib.json] [--work-dir work_dirs/calib256]

With ``--work-dir`` the run keeps its partial state there after every unit (as
``tools/quantize.py`` does) and a rerun with the same arguments continues from it, so a
multi-hour run (256 images) survives being stopped; the peak RSS printed is then that of the
last process, and each process logs its own.

Images are read from disk one at a time as mmq asks for them (as a dataloader does), so the
peak memory is mmq's: block inputs beyond ``--budget-gb`` spill to disk. Prints calibration
wall time, backbone passes over the calibration set, peak resident memory
(ru_maxrss, includes the model and the process), spilled activations, and float vs
fake-quantized inference time per image (same run, same image).
"""
import argparse
import hashlib
import json
import os
import resource
import tempfile
import time

import cv2
import numpy as np
import torch
from mmengine.logging import MMLogger

import mmq
from mmq.data import generate_shapes_coco
from mmq.models import set_quant_enabled
from mmq.config.detector_config import build_detector

STOCK = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def read_image(root: str, i: int, h: int, w: int) -> torch.Tensor:
    """Training image ``i`` of a generated set, normalised and padded as mmdet's data
    preprocessor does: ``(1, 3, H', W')``."""
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    img = cv2.imread(os.path.join(root, 'train', f'{i:06d}.png'))[..., ::-1]
    x = torch.from_numpy(((img - mean) / std).astype(np.float32)).permute(2, 0, 1)
    pad_h, pad_w = (-h) % 32, (-w) % 32  # the data preprocessor's size divisor
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))[None]


def read_batch(root: str, i: int, h: int, w: int) -> dict:
    """Training image ``i`` as mmdet's test dataloader yields it (uint8 BGR, one sample)."""
    from mmdet.structures import DetDataSample
    img = cv2.imread(os.path.join(root, 'train', f'{i:06d}.png'))
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         scale_factor=(1.0, 1.0)))
    return dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()],
                data_samples=[sample])


def load_images(root: str, n: int, h: int, w: int):
    """Generate ``n`` images of ``h x w`` under ``root`` and read them all (a list)."""
    generate_shapes_coco(root, num_train=n, num_val=1, height=h, width=w, seed=0)
    return [read_image(root, i, h, w) for i in range(n)]


def time_predict(model, image, reps: int = 2) -> float:
    from mmdet.structures import DetDataSample
    h, w = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         scale_factor=(1.0, 1.0), pad_shape=(h, w),
                                         batch_input_shape=(h, w)))
    times = []
    with torch.no_grad():
        for _ in range(reps):
            start = time.perf_counter()
            model.predict(image, [sample])
            times.append(time.perf_counter() - start)
    return min(times)


def weights_sha256(model: torch.nn.Module) -> str:
    """Digest of the (seeded, random) weights, so a resumed run proves it has the same."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_in_work_dir(args, target, data, qcfg: dict, logger, stage_done) -> dict:
    """:func:`mmq.quantize` with the work dir's resumable files (checked identity)."""
    from mmq.calibration.work_dir import calibrate_in_work_dir
    from mmq.config.quant_config import QuantConfig
    identity = dict(checkpoint_sha256=weights_sha256(target), seed=0,
                    images=[f'shapes-{args.height}x{args.width}-{i}' for i in range(args.images)],
                    mmq_version=mmq.__version__)
    return calibrate_in_work_dir(target, data, QuantConfig.from_dict(qcfg), args.work_dir,
                                 identity, activation_budget_bytes=int(args.budget_gb * 1024**3),
                                 logger=logger, on_stage_done=stage_done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=32)
    parser.add_argument('--height', type=int, default=800)
    parser.add_argument('--width', type=int, default=1333)
    parser.add_argument('--budget-gb', type=float, default=2.0)
    parser.add_argument('--rows', type=int, default=256)
    parser.add_argument('--windows', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--reconstruct-iters', type=int, default=0,
                        help='also run the reconstruction stage with this many steps per block '
                        '(batch 2, APH on 2 images): the detector is handed dataloader batches, '
                        'as the hook does; for its memory, not a useful schedule')
    parser.add_argument('--out', default='work_dirs/calibration_benchmark.json')
    parser.add_argument('--work-dir', default=None,
                        help='keep the partial state here after every unit and resume from it')
    args = parser.parse_args()
    logger = MMLogger.get_instance('mmq-calibration-benchmark')
    torch.manual_seed(0)
    model = build_detector(STOCK)
    with tempfile.TemporaryDirectory() as root:
        print(f'generating {args.images} images of {args.height}x{args.width} ...', flush=True)
        # Streamed from disk: mmq keeps them within --budget-gb and spills the rest.
        generate_shapes_coco(root, num_train=args.images, num_val=1, height=args.height,
                             width=args.width, seed=0)
        rss_before = peak_rss_gb()
        qcfg = dict(w_bits=4, a_bits=4, search_rows=args.rows, search_windows=args.windows,
                    rounds=args.rounds)
        if args.reconstruct_iters:
            qcfg.update(stages=['calibrate', 'reconstruct'],
                        reconstruct=dict(iters=args.reconstruct_iters, batch=2, aph_images=2))
            target = model
            data = (read_batch(root, i, args.height, args.width) for i in range(args.images))
        else:
            target = model.backbone
            data = (read_image(root, i, args.height, args.width) for i in range(args.images))

        def stage_done(stage, done, stage_report):
            print(f'[benchmark] stage {stage} done: {stage_report.get("seconds", 0):.0f} s, '
                  f'peak RSS so far {peak_rss_gb():.2f} GB', flush=True)

        start = time.perf_counter()
        if args.work_dir:
            report = run_in_work_dir(args, target, data, qcfg, logger, stage_done)
        else:
            report = mmq.quantize(target, data, qcfg, logger=logger,
                                  activation_budget_bytes=int(args.budget_gb * 1024**3),
                                  spill_dir=os.path.join(root, 'spill'),
                                  on_stage_done=stage_done)
        seconds = time.perf_counter() - start
        rss_after = peak_rss_gb()
        first = read_image(root, 0, args.height, args.width)
    spilled = max(u.get('spilled_items', 0) for u in report['units'])
    t_quant = time_predict(model, first)
    set_quant_enabled(model, False)
    t_float = time_predict(model, first)
    set_quant_enabled(model, True)
    result = dict(
        images=args.images, input=f'{args.height}x{args.width}', quant_cfg=report['quant_cfg'],
        stages=qcfg.get('stages', ['calibrate']), calibration_seconds=seconds,
        backbone_passes=report['backbone_passes'],
        units=len(report['units']), peak_rss_gb=rss_after,
        peak_rss_gb_before_calibration=rss_before,
        max_spilled_items=spilled, float_predict_s=t_float, quant_predict_s=t_quant,
        quant_over_float=t_quant / t_float,
        slowest_units=sorted(((u.get('stage', 'calibrate'), u['unit'], round(u['seconds'], 1))
                              for u in report['units']),
                             key=lambda x: -x[2])[:4])
    print(json.dumps(result, indent=1))
    print('\n| images | input | calibration | backbone passes | peak RSS | spilled items '
          '| predict float / W4A4 |')
    print('|---|---|---|---|---|---|---|')
    print(f"| {args.images} | {args.height}x{args.width} | {seconds:.0f} s | "
          f"{report['backbone_passes']:.0f} | {rss_after:.1f} GB | {spilled} | "
          f'{t_float:.1f} s / {t_quant:.1f} s ({t_quant / t_float:.2f}x) |')
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(result=result, report=report), f, indent=1)


if __name__ == '__main__':
    main()
