"""mmq's registries.

``MODELS`` and ``HOOKS`` are children of mmengine's root registries, so configs whose default
scope is ``mmdet`` reach mmq's parts as ``type='mmq.QuantSwinTransformer'`` or
``type='mmq.QuantCalibrationHook'``. ``QUANTIZERS`` and ``CALIBRATORS`` hold the quantizer
modules and the parameter-choosing algorithms that quantization configs name;
``BACKBONE_ADAPTERS`` one adapter per supported backbone family (``mmq/models/adapters/``).
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmq')
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmq', locations=['mmq.hooks'])
QUANTIZERS = Registry('quantizer', scope='mmq', locations=['mmq.quantizers'])
CALIBRATORS = Registry('calibrator', scope='mmq', locations=['mmq.quantizers'])
BACKBONE_ADAPTERS = Registry('backbone adapter', scope='mmq',
                             locations=['mmq.models.adapters'])
