"""tools/convert_swin_det_checkpoint.py on a state dict in the old (mmdet 2.x) key layout."""
import os
import subprocess
import sys

import pytest
import torch
from mmdet.models.backbones import SwinTransformer
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tools'))
from convert_swin_det_checkpoint import convert_state_dict  # noqa: E402

DIM, DEPTHS, HEADS = 16, (1, 1), (1, 2)


def old_layout_state_dict(seed=0):
    """Keys as the Swin detection repository writes them, random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {'backbone.patch_embed.proj.weight': r(DIM, 3, 4, 4),
          'backbone.patch_embed.proj.bias': r(DIM),
          'backbone.patch_embed.norm.weight': r(DIM), 'backbone.patch_embed.norm.bias': r(DIM)}
    dim = DIM
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        for j in range(depth):
            p = f'backbone.layers.{i}.blocks.{j}.'
            sd.update({
                p + 'norm1.weight': r(dim), p + 'norm1.bias': r(dim),
                p + 'attn.relative_position_bias_table': r(13 * 13, heads),
                p + 'attn.relative_position_index': torch.randint(0, 169, (49, 49),
                                                                  generator=g),
                p + 'attn.qkv.weight': r(3 * dim, dim), p + 'attn.qkv.bias': r(3 * dim),
                p + 'attn.proj.weight': r(dim, dim), p + 'attn.proj.bias': r(dim),
                p + 'norm2.weight': r(dim), p + 'norm2.bias': r(dim),
                p + 'mlp.fc1.weight': r(4 * dim, dim), p + 'mlp.fc1.bias': r(4 * dim),
                p + 'mlp.fc2.weight': r(dim, 4 * dim), p + 'mlp.fc2.bias': r(dim)})
        if i < len(DEPTHS) - 1:
            p = f'backbone.layers.{i}.downsample.'
            sd.update({p + 'norm.weight': r(4 * dim), p + 'norm.bias': r(4 * dim),
                       p + 'reduction.weight': r(2 * dim, 4 * dim)})
        sd.update({f'backbone.norm{i}.weight': r(dim), f'backbone.norm{i}.bias': r(dim)})
        dim *= 2
    sd['neck.lateral_convs.0.conv.weight'] = r(8, DIM, 1, 1)
    return sd


def original_patch_merging(x, norm_w, norm_b, reduction_w):
    """The Swin paper code's merging: concat of the four 2x2 neighbours, norm, reduction."""
    x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
    x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    x = torch.cat([x0, x1, x2, x3], -1).flatten(1, 2)
    x = F.layer_norm(x, (x.shape[-1], ), norm_w, norm_b)
    return x @ reduction_w.t()


def test_converted_keys_load_strictly_and_merge_identically():
    old = old_layout_state_dict()
    new = convert_state_dict(old)
    assert new['neck.lateral_convs.0.conv.weight'] is old['neck.lateral_convs.0.conv.weight']
    model = SwinTransformer(embed_dims=DIM, depths=DEPTHS, num_heads=HEADS, window_size=7,
                            out_indices=(0, 1), convert_weights=False)
    backbone = {k[len('backbone.'):]: v for k, v in new.items() if k.startswith('backbone.')}
    model.load_state_dict(backbone, strict=True)
    assert torch.equal(model.stages[0].blocks[0].attn.w_msa.qkv.weight,
                       old['backbone.layers.0.blocks.0.attn.qkv.weight'])
    assert torch.equal(model.stages[0].blocks[0].ffn.layers[1].weight,
                       old['backbone.layers.0.blocks.0.mlp.fc2.weight'])
    # The re-ordered PatchMerging computes what the original one computes.
    x = torch.randn(2, 8, 8, DIM)
    p = 'backbone.layers.0.downsample.'
    ref = original_patch_merging(x, old[p + 'norm.weight'], old[p + 'norm.bias'],
                                 old[p + 'reduction.weight'])
    out, _ = model.stages[0].downsample(x.flatten(1, 2), (8, 8))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_refuses_new_layout_and_non_swin(tmp_path):
    new = convert_state_dict(old_layout_state_dict())
    with pytest.raises(ValueError, match='already in the mmdet 3.x layout'):
        convert_state_dict(new)
    with pytest.raises(ValueError, match='not a Swin detection checkpoint'):
        convert_state_dict({'backbone.conv1.weight': torch.zeros(1)})


def test_command_line(tmp_path):
    src, dst = tmp_path / 'old.pth', tmp_path / 'new.pth'
    torch.save(dict(state_dict=old_layout_state_dict(), meta=dict(epoch=36)), src)
    subprocess.run([sys.executable, 'tools/convert_swin_det_checkpoint.py', str(src), str(dst)],
                   check=True)
    out = torch.load(dst, weights_only=True)
    assert out['meta']['epoch'] == 36
    assert 'backbone.stages.1.blocks.0.attn.w_msa.relative_position_bias_table' in out[
        'state_dict']
    missing = subprocess.run(
        [sys.executable, 'tools/convert_swin_det_checkpoint.py', str(tmp_path / 'no.pth'),
         str(dst)], capture_output=True, text=True)
    assert missing.returncode != 0 and 'does not exist' in missing.stderr
