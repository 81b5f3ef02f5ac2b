"""Build an mmdet detector from a config file or a scoped config name without downloads."""
import os
import tempfile

from mmengine.config import Config
from torch import nn


def load_config(config: str) -> Config:
    """A config from a path or a scoped name such as ``'mmdet::swin/....py'``."""
    if os.path.isfile(config):
        return Config.fromfile(config)
    with tempfile.NamedTemporaryFile('w', suffix='.py') as f:
        f.write(f"_base_ = ['{config}']\n")
        f.flush()
        return Config.fromfile(f.name)


def build_detector(config: str, pretrained_backbone: bool = False) -> nn.Module:
    """The config's detector in eval mode; the backbone's ``init_cfg`` (a checkpoint URL in
    the stock configs) is dropped unless ``pretrained_backbone``."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config(config)
    if not pretrained_backbone:
        cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.eval()
    return model
