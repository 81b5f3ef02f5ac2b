"""Every shipped config loads with ``Config.fromfile`` and builds its model (random weights, no
network); every quant preset parses into a QuantConfig and its quantized structure is built."""
import glob
import importlib.util
import os.path as osp

import pytest
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmq  # noqa: F401  (registers mmq's modules)
from mmq.calibration.quantize import prepare
from mmq.models import QuantConfig
from mmq.models.transform import count_quant_layers

ROOT = osp.join(osp.dirname(__file__), '..', 'configs')
BENCHMARK = osp.join(osp.dirname(__file__), '..', 'benchmarks', 'accuracy_benchmark.py')
# Demo configs that reproduce an accuracy-benchmark row (bits, method) calibrated on more than
# 32 images.
ROW_REPRODUCERS = {'mask-rcnn_dinov2-vits14_w4a4-aphq-tokens7-g16_shapes.py':
                   (4, 'adalog-fpcs-tokens7-g16+mr+rec-long#n256')}
DETECTOR_CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, '**', '*.py'), recursive=True)
    if '_base_' not in p.split(osp.sep))
PRESETS = sorted(glob.glob(osp.join(ROOT, '_base_', 'quant', 'w*.py')))
HOOK = 'mmq.QuantCalibrationHook'


def _no_network(cfg: Config) -> None:
    backbone = cfg.model.backbone
    backbone.init_cfg = None
    if 'pretrained' in backbone:
        backbone.pretrained = None


def test_every_config_is_found():
    assert len(DETECTOR_CONFIGS) >= 30 and len(PRESETS) == 18


@pytest.mark.parametrize('path', DETECTOR_CONFIGS, ids=lambda p: osp.relpath(p, ROOT))
def test_detector_config_loads_and_builds(path):
    register_all_modules()
    cfg = Config.fromfile(path)
    _no_network(cfg)
    model = MODELS.build(cfg.model)
    assert model.backbone is not None and hasattr(model, 'roi_head')
    hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') == HOOK]
    if hooks and osp.sep + 'demo' + osp.sep in path and osp.basename(
            path) not in ROW_REPRODUCERS:
        assert hooks[0]['num_images'] == 32  # the demos stay CPU-sized (APHQ presets: 256)
    if 'quant_cfg' in cfg:
        assert hooks, f'{path} has a quant_cfg but no {HOOK}'
        qcfg = prepare(model, cfg.quant_cfg)  # the quantized structure builds too
        counts = count_quant_layers(model.backbone)
        assert counts.get('QuantLinear', 0) > 0, counts
        if qcfg.scope == 'detector':
            assert count_quant_layers(model.roi_head)


@pytest.mark.parametrize('path', PRESETS, ids=osp.basename)
def test_quant_preset_parses(path):
    cfg = Config.fromfile(path)
    qcfg = QuantConfig.from_dict(cfg.quant_cfg)
    name = osp.basename(path)
    bits = int(name[1]), int(name[3])
    assert (qcfg.w_bits, qcfg.a_bits) == bits
    assert [h['type'] for h in cfg.custom_hooks] == [HOOK]
    assert cfg.custom_imports['imports'] == ['mmq']
    if 'uniform-minmax' in name:
        assert qcfg.calibrator == 'minmax'
    elif 'uniform-percentile' in name:
        assert qcfg.calibrator == 'percentile'
    else:
        assert (qcfg.calibrator, qcfg.softmax, qcfg.gelu) == ('fpcs', 'adalog', 'adalog')
    images = cfg.custom_hooks[0]['num_images']
    if 'aphq' in name:
        assert qcfg.stages == ['mr', 'calibrate', 'reconstruct']
        assert qcfg.mr['fc2_init'] == 'lstsq'  # the measured, more faithful MR start
        assert images == 256  # the published detection count for reconstruction
    else:
        assert images == 32
    assert qcfg.weight_rounding == ('gptq' if 'gptq' in name else 'nearest')
    assert qcfg.token_group_size == (16 if 'g16' in name else None)
    assert (qcfg.token_roles is not None) == ('g16' in name)
    if 'tokens7' in name:
        assert len(set(qcfg.token_roles)) == 7


@pytest.mark.parametrize('name', sorted(ROW_REPRODUCERS))
def test_demo_config_reproduces_its_benchmark_row(name):
    """The shipped config and the benchmark row it quotes run the same calibration."""
    spec = importlib.util.spec_from_file_location('accuracy_benchmark', BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bits, method = ROW_REPRODUCERS[name]
    _, _, seed, images = bench.split_method(method)
    cfg = Config.fromfile(osp.join(ROOT, 'demo', name))
    row = QuantConfig.from_dict(bench.row_quant_cfg(bits, method))
    assert QuantConfig.from_dict(cfg.quant_cfg) == row
    hook = cfg.custom_hooks[0]
    assert (hook['num_images'], hook['seed']) == (images, seed or 0)
