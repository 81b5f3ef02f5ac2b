"""What scoring a row subsample of each attention map costs in accuracy and saves in time.

    python benchmarks/attention_queries_sweep.py [--images 32] [--blocks 1]

Calibrates the demo ViT's patch embedding and first blocks (global attention over 320 tokens,
committed checkpoint, generated training images) at W4A4 with AdaLog + FPCS for several
``quant_cfg.search_queries`` (query rows scored per attention map; 320 = whole maps) and
prints each block's calibration time and unit output SQNR.
"""
import argparse

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint, set_random_seed
from mmdet.registry import DATASETS, MODELS

import mmq  # noqa: F401  (registers mmq.TimmViTDet)
from search_budget_sweep import run  # noqa: E402  (same folder)

CONFIG = 'configs/demo/mask-rcnn_vit-demo_fpn_shapes.py'
CHECKPOINT = 'checkpoints/demo/mask-rcnn_vit-demo_shapes.pth'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=32)
    parser.add_argument('--blocks', type=int, default=1, help='ViT blocks after patch_embed')
    parser.add_argument('--queries', type=int, nargs='+', default=[16, 64, 320])
    args = parser.parse_args()
    init_default_scope('mmdet')
    set_random_seed(0)  # the training pipeline flips images at random
    cfg = Config.fromfile(CONFIG)
    detector = MODELS.build(cfg.model)
    load_checkpoint(detector, CHECKPOINT, map_location='cpu', logger='silent')
    detector.eval()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(args.images)])
    with torch.no_grad():
        images = detector.data_preprocessor(batch, False)['inputs']
    columns = [f'unit {i}: s, output SQNR dB' for i in range(1 + args.blocks)]
    print('| search_queries | ' + ' | '.join(columns) + ' |')
    print('|---|' + '---|' * (1 + args.blocks))
    for queries in args.queries:
        _, sqnr, seconds = run(detector.backbone, list(images.split(1)),
                               dict(w_bits=4, a_bits=4, search_queries=queries), 1 + args.blocks)
        print(f'| {queries} | ' + ' | '.join(f'{t:.1f}, {db:.2f}' for t, db in zip(seconds, sqnr))
              + ' |', flush=True)


if __name__ == '__main__':
    main()
