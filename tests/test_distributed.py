"""Two CPU processes (gloo): rank 0 calibrates, every rank ends with the identical quantized
state, and the evaluation is distributed by mmengine's sampler and metric collection."""
import hashlib
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .conftest import FAST_QUANT, swin_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data_root, work_dir, tmp_path, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    from mmengine.runner import Runner
    cfg = swin_config(data_root, work_dir, FAST_QUANT, tmp_path)
    cfg.randomness = dict(seed=rank)  # different random weights per rank on purpose
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    digest = hashlib.sha256()
    for k, v in sorted(runner.model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().contiguous().numpy().tobytes())
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(dict(hash=digest.hexdigest(), metrics=metrics), f)
    dist.destroy_process_group()


def test_two_ranks_end_identical(shapes_data, tmp_path):
    out_dir = str(tmp_path)
    mp.spawn(_worker, args=(2, _free_port(), shapes_data, str(tmp_path / 'work'), str(tmp_path),
                            out_dir), nprocs=2, join=True)
    results = [json.load(open(os.path.join(out_dir, f'rank{r}.json'))) for r in range(2)]
    assert results[0]['hash'] == results[1]['hash']
    assert 'coco/bbox_mAP' in results[0]['metrics']
    assert results[0]['metrics'] == results[1]['metrics']  # the metric is collected across ranks
