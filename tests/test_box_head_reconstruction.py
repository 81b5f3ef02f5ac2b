"""RoI box-head reconstruction data (``reconstruct.box_head``) on the shipped Cascade Mask
R-CNN config: one head per cascade stage, each on the float model's own RoIs of that stage."""
import os.path as osp

import pytest
import torch
from mmdet.structures import DetDataSample

from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.box_head_reconstruction import _first_rois, _head_data, box_heads
from mmq.calibration.quantize import prepare
from mmq.config import QuantConfig
from mmq.config.detector_config import build_detector

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CASCADE = osp.join(ROOT, 'configs/cascade_mask_rcnn/cascade-mask-rcnn_swin-t_w4a4-adalog_coco.py')


def test_first_rois_keeps_each_images_leading_rois():
    rois = torch.tensor([[0, 1, 1, 2, 2], [0, 2, 2, 3, 3], [0, 3, 3, 4, 4],
                         [1, 5, 5, 6, 6], [1, 6, 6, 7, 7]], dtype=torch.float)
    assert _first_rois(rois, 2).tolist() == [0, 1, 3, 4]
    assert _first_rois(rois, 1).tolist() == [0, 3]


@pytest.fixture(scope='module')
def cascade():
    torch.manual_seed(0)
    model = build_detector(CASCADE)
    # Quantized structure, nothing calibrated yet: the quantized path is the float one.
    prepare(model, QuantConfig(scope='detector'))
    return model


def test_cascade_box_heads_get_their_own_stage_rois(cascade):
    """Every cascade stage's head gets inputs and targets on at most ``per_image`` RoIs per
    image; with no quantizer calibrated, the quantized model's features pooled over the
    captured RoIs are exactly the float head's inputs, and the targets are the head's own
    outputs on them (so inputs, targets and RoIs describe the same boxes)."""
    model = cascade
    stages = box_heads(model.roi_head)
    assert len(stages) == 3
    g = torch.Generator().manual_seed(0)
    h, w = 128, 160
    batches = []
    for _ in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0), pad_shape=(h, w),
                                             batch_input_shape=(h, w)))
        batches.append(dict(inputs=torch.randn(1, 3, h, w, generator=g), data_samples=[sample]))
    store = ActivationStore(2**30)
    stores = [(store.sibling(), store.sibling(), store.sibling()) for _ in stages]
    try:
        _head_data(model, model, batches, 16, stores)
        for (_, head), (q_in, fp_in, targets) in zip(stages, stores):
            assert len(q_in) == len(fp_in) == len(targets) == len(batches)
            for (q_x, ), (fp_x, ), outs in zip(q_in, fp_in, targets):
                assert 0 < q_x.shape[0] <= 16
                assert torch.equal(q_x, fp_x)
                with torch.no_grad():
                    ref = [o for o in head(fp_x) if torch.is_tensor(o)]
                assert len(outs) == len(ref) == 2  # class scores, box deltas
                for o, r in zip(outs, ref):
                    torch.testing.assert_close(o, r)
    finally:
        for group in stores:
            for s in group:
                s.close()
        store.close()


def test_no_rois_is_a_clear_error(cascade):
    """A calibration set on which the float model proposes nothing leaves the box heads
    nothing to learn from: a clear error, not a crash inside the training loop."""
    from mmq.calibration.box_head_reconstruction import reconstruct_box_heads
    from mmq.config.aphq_options import ReconstructOptions
    store = ActivationStore(2**20)
    try:
        with pytest.raises(ValueError, match='proposed no RoIs'):
            reconstruct_box_heads(cascade, cascade, [], store, ReconstructOptions(box_head=True))
    finally:
        store.close()


def test_detector_batches_keep_no_image_outside_the_store(cascade, tmp_path, monkeypatch):
    """At detector scope the preprocessed batches (for the neck and heads) read their images
    back from the store: with every image spilled, nothing else keeps one alive, and each
    batch still gives its own image and data samples."""
    import weakref

    from mmq.calibration.quantize import _collect_images
    appended = []
    append = ActivationStore.append

    def tracked(self, item):
        appended.append(weakref.ref(item[0]))
        append(self, item)

    monkeypatch.setattr(ActivationStore, 'append', tracked)
    g = torch.Generator().manual_seed(0)
    data, samples = [], []
    for k in range(3):
        sample = DetDataSample(metainfo=dict(img_shape=(64, 96), ori_shape=(64 + k, 96),
                                             scale_factor=(1.0, 1.0)))
        samples.append(sample)
        data.append(dict(inputs=[torch.randint(0, 255, (3, 64, 96), generator=g,
                                               dtype=torch.uint8)], data_samples=[sample]))
    store = ActivationStore(0, spill_dir=str(tmp_path))
    try:
        batches = _collect_images(cascade, data, store, keep_batches=True)
        assert len(appended) == len(batches) == 3
        assert all(ref() is None for ref in appended)  # only the spilled copies remain
        for k, batch in enumerate(batches):
            want = cascade.data_preprocessor(data[k], False)
            assert torch.equal(batch['inputs'], want['inputs'])
            assert batch['data_samples'][0].metainfo == want['data_samples'][0].metainfo
            assert batch['data_samples'][0].ori_shape == samples[k].ori_shape
    finally:
        store.close()
