"""The installed stack works as mmq needs it: compiled mmcv ops, a stock mmdet Swin detector,
timm, and mmq's registrations."""
import numpy as np
import pytest
import torch


def test_mmcv_roi_align_known_answer():
    from mmcv.ops import RoIAlign
    # A linear ramp f(x, y) = x: the bilinear average over a box is its centre's x.
    feat = torch.arange(8, dtype=torch.float32).repeat(8, 1)[None, None]  # (1, 1, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])  # (batch, x1, y1, x2, y2)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feat, rois)
    # aligned=True shifts the box by -0.5 to [0.5, 4.5]: two bins of width 2 sampled at
    # x = (1, 2) and (3, 4) (pixel i sits at x = i), so the bin means are 1.5 and 3.5.
    expected = torch.tensor([[1.5, 3.5]]).expand(2, 2)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)


def test_mmcv_nms_known_answer():
    from mmcv.ops import batched_nms, nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.7]))
    # Different classes never suppress each other.
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2]


def test_stock_swin_mask_rcnn_predicts(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']\n")
    cfg = Config.fromfile(str(cfg_file))
    cfg.model.backbone.init_cfg = None
    # Few proposals keep the CPU forward short; the architecture is the stock one.
    cfg.model.test_cfg.rpn.nms_pre = 200
    cfg.model.test_cfg.rpn.max_per_img = 100
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 255, (3, 224, 320), dtype=np.uint8))
    sample = DetDataSample(metainfo=dict(img_shape=(224, 320), ori_shape=(224, 320),
                                         scale_factor=(1.0, 1.0)))
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
    # Score threshold 0 so random weights still produce detections.
    model.test_cfg.rcnn.score_thr = 0.0
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
    assert len(results) == 1 and isinstance(results[0], DetDataSample)
    inst = results[0].pred_instances
    assert len(inst) > 0
    assert inst.bboxes.shape[1] == 4
    assert inst.masks.shape[1:] == (224, 320)
    assert torch.isfinite(inst.scores).all()


def test_timm_vit_forward():
    import timm
    model = timm.create_model('vit_small_patch16_224', pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_mmq_registers_its_modules():
    import mmq
    from mmengine.registry import HOOKS, MODELS
    for name in ('UniformQuantizer', 'AdaLogQuantizer', 'Log2Quantizer', 'LogSqrt2Quantizer'):
        assert mmq.QUANTIZERS.get(name) is not None, name
    for name in ('MinMaxCalibrator', 'PercentileCalibrator', 'FPCSCalibrator'):
        assert mmq.CALIBRATORS.get(name) is not None, name
    # mmq's model and hook registries hang under mmengine's roots, so 'mmq.X' resolves.
    assert mmq.MODELS.parent is MODELS and mmq.HOOKS.parent is HOOKS
    assert mmq.MODELS.scope == 'mmq'


def test_quantizer_builds_from_config():
    import mmq
    q = mmq.QUANTIZERS.build(dict(type='AdaLogQuantizer', bits=4, fixed_scale=1.0))
    assert q.bits == 4 and q.r == 37
    with pytest.raises(KeyError):
        mmq.QUANTIZERS.build(dict(type='NoSuchQuantizer', bits=4))
