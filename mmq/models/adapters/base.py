"""Backbone adapters: what mmq knows about one backbone family, in one place.

For the modules of its family an adapter says how a backbone splits into calibration units,
which Linear / Conv inputs have a special role (post-LayerNorm, post-GELU, pixels), which
attention modules become quantized ones, which LayerNorm feeds which Linear (LayerNorm
reparameterization) and where the two-layer MLPs are (MLP reconstruction). Adapters are
registered in :data:`mmq.registry.BACKBONE_ADAPTERS`; a new backbone family is one new file
with one registered adapter, and nothing else in mmq names a backbone's module types.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

from mmq.config.quant_config import QuantConfig

State = tuple
# (LayerNorm, the Linear it feeds, the buffer that must hold the offset b or None)
Pair = Tuple[nn.LayerNorm, nn.Linear, Optional[Tensor]]


@dataclass
class Unit:
    """A calibration unit: a module whose quantized layers are calibrated together, and the
    function that maps the unit's input state to the next unit's input state."""
    name: str
    module: nn.Module
    run: Callable[[State], State]


@dataclass
class MLPParts:
    """One MLP: the module whose output APH perturbs, its two Linears and its activation."""
    module: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    act: nn.Module
    set_act: Callable[[nn.Module], None]

    def forward(self, x: Tensor, act: Callable[[Tensor], Tensor],
                ub: Optional[float] = None) -> Tensor:
        h = act(self.fc1(x))
        if ub is not None:
            h = h.clamp(0, ub)
        return self.fc2(h)


def activation_role(act: nn.Module) -> Optional[str]:
    """The input role of the Linear that follows ``act`` in an MLP."""
    if isinstance(act, nn.GELU):
        return 'gelu'
    if isinstance(act, nn.ReLU):
        return 'relu'
    return None


class BackboneAdapter:
    """One backbone family. Every method is asked about every module of a model (or, for
    :meth:`units`, about a backbone of ``backbone_types``) and answers only for its own
    module types."""

    backbone_types: Tuple[type, ...] = ()

    def units(self, backbone: nn.Module) -> List[Unit]:
        """The backbone as a chain of calibration units."""
        raise NotImplementedError

    def input_roles(self, module: nn.Module) -> Dict[int, str]:
        """``id(layer) -> role`` for layers inside ``module`` whose input is special:
        ``'ln_input'``, ``'proj_input'``, ``'gelu'``, ``'relu'`` or ``'image'``."""
        return {}

    def quantized_attention(self, module: nn.Module,
                            qcfg: QuantConfig) -> Optional[nn.Module]:
        """The quantized replacement of an attention module of this family, else ``None``."""
        return None

    def is_quantized_attention(self, module: nn.Module) -> bool:
        """Whether ``module`` is already one of this family's quantized attentions."""
        return False

    def layernorm_pairs(self, module: nn.Module) -> List[Pair]:
        """The (LayerNorm, Linear, offset buffer) triples inside one block of this family."""
        return []

    def mlp(self, module: nn.Module) -> Optional[MLPParts]:
        """``module`` as a two-layer MLP of this family, else ``None``."""
        return None
