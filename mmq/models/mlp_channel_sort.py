"""MLP hidden-channel sort: fc2's input channels in order of magnitude.

With ``token_group_size``, fc2's input (the post-GELU activation, token role ``'post_gelu'``)
takes one 4-bit range per token per block of ``g`` consecutive hidden channels. A block that
holds one large channel among small ones spends its levels on the large one. Sorting the hidden
channels by their RMS over the calibration set puts channels of like magnitude in the same
blocks. The permutation is exact: fc1's output rows (and bias) and fc2's input columns are
permuted alike, the activation between them acts element by element, and per-output-channel
weight quantization is unchanged by it (fc1's rows keep their own ranges; fc2's rows keep
their values, reordered). On the ``dinov2`` demo detector's real activations (fc2's input in
blocks 0 / 3 / 6 / 9, 4 bits in groups of 8) it raises the input SQNR by 3.2 / 1.0 / 1.5 /
1.8 dB (``python benchmarks/activation_format_probe.py``). Not part of the published methods
(reorder-based grouping as in RPTQ, here on the MLP's hidden channels only).
"""
import torch
from torch import Tensor, nn


@torch.no_grad()
def sort_mlp_channels(fc1: nn.Linear, fc2: nn.Linear, magnitude: Tensor) -> Tensor:
    """Reorder the hidden channels between ``fc1`` and ``fc2`` by ascending ``magnitude``
    (one value per channel); returns the permutation (new position -> old channel)."""
    hidden = fc1.out_features
    if fc2.in_features != hidden or magnitude.numel() != hidden:
        raise ValueError(f'MLP channel sort needs fc1 outputs ({hidden}) = fc2 inputs '
                         f'({fc2.in_features}) = magnitudes ({magnitude.numel()}).')
    perm = torch.argsort(magnitude.flatten(), stable=True).to(fc1.weight.device)
    fc1.weight.copy_(fc1.weight[perm])
    if fc1.bias is not None:
        fc1.bias.copy_(fc1.bias[perm])
    fc2.weight.copy_(fc2.weight[:, perm])
    return perm
