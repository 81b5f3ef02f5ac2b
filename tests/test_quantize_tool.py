"""tools/quantize.py end to end: float checkpoint in, COCO metrics + quantized state out, and
the saved state reloads instead of calibrating."""
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.logging import MessageHub
from mmdet.utils import register_all_modules

from .conftest import FAST_QUANT, swin_config

TOOL = osp.join(osp.dirname(__file__), '..', 'tools', 'quantize.py')


def _metrics(stdout: str) -> str:
    found = re.findall(r'quantized model metrics: (\{.*\})', stdout)
    assert found, stdout[-3000:]
    return found[-1]


def test_quantize_tool_calibrates_then_reloads(shapes_data, tmp_path):
    cfg = swin_config(shapes_data, str(tmp_path / 'unused'), FAST_QUANT, tmp_path)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=2)]
    cfg.log_level = 'INFO'
    # Predictions dumped too: the reload is judged on them, not on (possibly all-zero) mAPs.
    cfg.test_evaluator = [cfg.test_evaluator,
                          dict(type='DumpDetResults', out_file_path=str(tmp_path / 'a.pkl'))]
    register_all_modules()
    torch.manual_seed(0)
    ckpt = str(tmp_path / 'float.pth')
    # As mmengine's CheckpointHook writes it: with a message hub (HistoryBuffer objects),
    # which torch.load(weights_only=True), and so mmengine's own loader, refuses.
    hub = MessageHub.get_instance('mmq_test_quantize_tool')
    hub.update_scalar('train/loss', 1.0)
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict(), meta=dict(epoch=1),
                    message_hub=hub.state_dict()), ckpt)
    cfg_file = str(tmp_path / 'quant_cfg.py')
    cfg.dump(cfg_file)
    work = str(tmp_path / 'work')
    run = subprocess.run([sys.executable, TOOL, cfg_file, ckpt, '--work-dir', work],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    first = _metrics(run.stdout + run.stderr)
    assert 'HistoryBuffer' in run.stdout and 'are loaded from there' in run.stdout
    report = json.load(open(osp.join(work, 'calibration_report.json')))
    assert report['status'] == 'done' and report['num_images'] == 2
    state = osp.join(work, 'quantized_state.pth')
    again = subprocess.run([
        sys.executable, TOOL, cfg_file, ckpt, '--work-dir', str(tmp_path / 'work2'),
        '--quant-state', state, '--cfg-options',
        f"test_evaluator.1.out_file_path={tmp_path / 'b.pkl'}"
    ], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert 'loaded quantized state' in out
    assert _metrics(out) == first  # the reloaded state evaluates identically
    import pickle  # files this test wrote itself
    a = pickle.load(open(tmp_path / 'a.pkl', 'rb'))
    b = pickle.load(open(tmp_path / 'b.pkl', 'rb'))
    assert len(a) == len(b) == 3
    for pa, pb in zip(a, b):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(pa['pred_instances'][key], pb['pred_instances'][key]), key
        assert len(pa['pred_instances']['scores']) > 0  # something was predicted
    assert not osp.exists(osp.join(tmp_path, 'work2', 'calibration_report.json'))


def test_quantize_tool_missing_checkpoint(tmp_path):
    cfg = osp.join(osp.dirname(__file__), '..', 'configs', 'mask_rcnn',
                   'mask-rcnn_swin-t_w4a4-adalog_coco.py')
    run = subprocess.run([sys.executable, TOOL, cfg, str(tmp_path / 'missing.pth')],
                         capture_output=True, text=True)
    assert run.returncode != 0 and 'does not exist' in run.stderr


def test_hook_refuses_a_mismatched_checkpoint(shapes_data, tmp_path):
    import pytest
    from mmengine.runner import Runner
    from .test_convert_checkpoint import old_layout_state_dict
    ckpt = str(tmp_path / 'old_layout.pth')
    torch.save(dict(state_dict=old_layout_state_dict()), ckpt)
    cfg = swin_config(shapes_data, str(tmp_path / 'w'), FAST_QUANT, tmp_path)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=2)]
    cfg.load_from = ckpt
    with pytest.raises(ValueError, match='convert_swin_det_checkpoint'):
        Runner.from_cfg(cfg).test()


def test_hook_reports_an_empty_calibration_split(tmp_path):
    import pytest
    from mmengine.runner import Runner

    from mmq.data import generate_shapes_coco
    root = str(tmp_path / 'data')
    generate_shapes_coco(root, num_train=0, num_val=2, height=96, width=128)
    cfg = swin_config(root, str(tmp_path / 'w'), FAST_QUANT, tmp_path)
    with pytest.raises(ValueError, match='calibration dataset is empty'):
        Runner.from_cfg(cfg).test()


@pytest.mark.parametrize('config', [
    'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py',  # one-stage
    'mmdet::mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py',  # query-based
])
def test_stock_swin_detectors_of_other_families_quantize(shapes_data, tmp_path, config):
    """Stock mmdet configs of other detector families (Mask R-CNN is the test above) with
    their unchanged Swin-T backbone run through tools/quantize.py: every backbone Linear is
    quantized and calibrated, COCO metrics come out, the state is saved."""
    from .conftest import stock_config
    cfg = stock_config(config, shapes_data, str(tmp_path / 'unused'), FAST_QUANT)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=1)]
    cfg.log_level = 'INFO'
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = str(tmp_path / 'float.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    cfg_file = str(tmp_path / 'quant_cfg.py')
    cfg.dump(cfg_file)
    work = str(tmp_path / 'work')
    run = subprocess.run([sys.executable, TOOL, cfg_file, ckpt, '--work-dir', work],
                         capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    metrics = json.loads(_metrics(run.stdout + run.stderr).replace("'", '"'))
    assert 'coco/bbox_mAP' in metrics
    report = json.load(open(osp.join(work, 'calibration_report.json')))
    assert report['status'] == 'done'
    layers = [layer for unit in report['units'] for layer in unit['layers']]
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.backbone.modules())
    assert sum(layer['type'] == 'QuantLinear' for layer in layers) == linears
    assert all(layer['quantizers'] for layer in layers)
    assert osp.isfile(osp.join(work, 'quantized_state.pth'))
