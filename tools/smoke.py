"""mmq smoke run: the stack works end to end on this machine.

    python tools/smoke.py

Builds the stock ``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py`` detector (random
weights, no download), predicts on a generated image, then quantizes the first Swin block's
Linear weights (per channel, FPCS on the layer output) and its post-Softmax / post-GELU
activations (AdaLog, FPCS) at 4 bits and prints each one's output SQNR.
"""
import time

import numpy as np
import torch

from mmq.config.detector_config import build_detector
from mmq.quantizers import (GELU_SHIFT, AdaLogQuantizer, FPCSCalibrator, UniformQuantizer,
                            output_mse)
from mmq.quantizers.objectives import sqnr_db

STOCK = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'


def main() -> None:
    from mmdet.structures import DetDataSample
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_detector(STOCK)
    print(f'[1/3] built {STOCK} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M '
          f'parameters) in {time.perf_counter() - t0:.1f} s', flush=True)

    block = model.backbone.stages[0].blocks[0]
    msa, fc1, fc2 = block.attn.w_msa, block.ffn.layers[0][0], block.ffn.layers[1]
    got = {}
    hooks = [
        msa.softmax.register_forward_hook(lambda m, i, o: got.__setitem__('attn', o)),
        msa.qkv.register_forward_hook(lambda m, i, o: got.__setitem__('qkv', o)),
        fc1.register_forward_hook(lambda m, i, o: got.__setitem__('fc1_in', i[0])),
        block.ffn.layers[0][1].register_forward_hook(lambda m, i, o: got.__setitem__('gelu', o)),
    ]
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 320, 480), np.uint8))
    sample = DetDataSample(metainfo=dict(img_shape=(320, 480), ori_shape=(320, 480),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    t0 = time.perf_counter()
    with torch.no_grad():
        result = model.predict(data['inputs'], data['data_samples'])[0]
    for h in hooks:
        h.remove()
    print(f'[2/3] predicted {len(result.pred_instances)} instances (boxes + masks) in '
          f'{time.perf_counter() - t0:.1f} s', flush=True)

    print('[3/3] 4-bit quantization of stage-1 block-1 (output SQNR, dB):', flush=True)
    g = torch.Generator().manual_seed(0)
    x = got['fc1_in'].reshape(-1, fc1.in_features)
    x = x[torch.randperm(x.shape[0], generator=g)[:1024]]
    for name, layer in (('fc1 weight', fc1), ('fc2 weight', fc2), ('qkv weight', msa.qkv)):
        w = layer.weight.detach()
        inp = x if layer is not fc2 else got['gelu'].reshape(-1, fc2.in_features)[:1024]
        ref = inp @ w.t()
        quantizer = UniformQuantizer(4, ch_axis=0)
        FPCSCalibrator(role='weight')(
            quantizer, w, output_mse(lambda wq, i=inp: i @ wq.transpose(-1, -2), ref, -1))
        print(f'  {name:22s} uniform/FPCS  {sqnr_db(ref, inp @ quantizer(w).t()):6.2f}')
    b, n, c3 = got['qkv'].shape
    v = got['qkv'].reshape(b, n, 3, msa.num_heads, -1).permute(2, 0, 3, 1, 4)[2]
    attn = got['attn']
    softmax_q = AdaLogQuantizer(4, fixed_scale=1.0)
    FPCSCalibrator()(softmax_q, attn, output_mse(lambda a: a @ v, attn @ v))
    softmax_q.eval()
    print(f'  {"post-Softmax (attn@v)":22s} AdaLog q={int(softmax_q.q):3d}  '
          f'{sqnr_db(attn @ v, softmax_q(attn) @ v):6.2f}')
    gelu = got['gelu'].reshape(-1, fc2.in_features)[:1024]
    gelu_q = AdaLogQuantizer(4, shift=GELU_SHIFT)
    ref = fc2(gelu)
    FPCSCalibrator()(gelu_q, gelu, output_mse(lambda a: fc2(a), ref))
    gelu_q.eval()
    with torch.no_grad():
        print(f'  {"post-GELU (fc2)":22s} AdaLog q={int(gelu_q.q):3d}  '
              f'{sqnr_db(ref, fc2(gelu_q(gelu))):6.2f}')
    print('smoke run OK')


if __name__ == '__main__':
    main()
