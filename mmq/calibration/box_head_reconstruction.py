"""Reconstruction of the RoI box head(s) at detector scope (``reconstruct.box_head``).

Beyond the published detection pipeline, which reconstructs the backbone blocks and the
neck only and leaves the RPN and RoI heads at their calibration. On the ``dinov2`` testbed
the W4A4 box head is what detector scope costs (``benchmarks/box_head_reconstruction.py``).

Each box head (one, or one per cascade stage) is trained like the neck: AdaRound, learned
activation scales and QDrop on the plain MSE of its outputs (class scores, box deltas)
against the float head's. Its RoIs are the float model's own at that stage (the RPN's best
``box_head_rois`` proposals per image, refined by the float earlier stages in a cascade), so inputs
and targets describe the same boxes: the float input is the float features pooled over them,
the quantized input the quantized neck's features pooled over the same RoIs. A box head
treats every RoI on its own, so keeping the first RoIs of each image is exact for those.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmq.config.aphq_options import ReconstructOptions
from mmq.models.transform import set_quant_enabled
from mmq.utils import seeded_generator
from .activation_store import ActivationStore
from .block_reconstruction import reconstruct_unit
from .units import Unit


def box_heads(roi_head: nn.Module) -> List[Tuple[nn.Module, nn.Module]]:
    """``(RoI extractor, box head)`` of each stage: one for a standard RoI head, one per
    stage of a cascade."""
    heads, extractors = roi_head.bbox_head, roi_head.bbox_roi_extractor
    if isinstance(heads, nn.ModuleList):
        return list(zip(extractors, heads))
    return [(extractors, heads)]


def _first_rois(rois: Tensor, per_image: int) -> Tensor:
    """Indices of the first ``per_image`` RoIs of every image (column 0 is the image index;
    mmdet keeps an image's RoIs together, best proposals first)."""
    keep = []
    for b in rois[:, 0].unique(sorted=True):
        idx = (rois[:, 0] == b).nonzero().squeeze(1)
        keep.append(idx[:per_image])
    return torch.cat(keep) if keep else rois.new_zeros(0, dtype=torch.long)


def _head_outputs(out) -> Tuple[Tensor, ...]:
    return tuple(o for o in out if torch.is_tensor(o))


@torch.no_grad()
def _head_data(model: nn.Module, fp_model: nn.Module, batches: Sequence[dict], per_image: int,
               stores: List[Tuple[ActivationStore, ...]]) -> None:
    """Fill each stage's ``(quantized inputs, float inputs, float outputs)`` stores: the box
    head's float inputs and outputs from the float model's own predict pass (hooks), on the
    first ``per_image`` RoIs of each image, and the quantized model's features pooled over
    the same RoIs."""
    stages = box_heads(model.roi_head)
    seen: Dict[int, list] = {}
    handles = []
    for s, (extractor, head) in enumerate(box_heads(fp_model.roi_head)):
        handles.append(extractor.register_forward_pre_hook(
            lambda m, args, s=s: seen.__setitem__(s, [args[1]])))
        handles.append(head.register_forward_hook(
            lambda m, args, out, s=s: seen[s].extend([args[0], _head_outputs(out)])))
    try:
        for batch in batches:
            seen.clear()
            set_quant_enabled(fp_model, False)
            try:
                fp_model.predict(batch['inputs'], batch['data_samples'])
            finally:
                set_quant_enabled(fp_model, True)
            feats = model.extract_feat(batch['inputs'])  # quantized
            for s, (extractor, _) in enumerate(stages):
                if len(seen.get(s, ())) != 3:
                    raise RuntimeError(f'box head {s} did not run in the float predict pass.')
                rois, fp_x, outs = seen[s]
                keep = _first_rois(rois, per_image)
                if keep.numel() == 0:
                    continue  # no proposal on these images: nothing to learn from
                q_x = extractor(feats[:extractor.num_inputs], rois[keep])
                if getattr(model.roi_head, 'with_shared_head', False):
                    q_x = model.roi_head.shared_head(q_x)
                q_in, fp_in, targets = stores[s]
                q_in.append((q_x, ))
                fp_in.append((fp_x[keep], ))
                targets.append(tuple(o[keep] for o in outs))
    finally:
        for h in handles:
            h.remove()


def reconstruct_box_heads(model: nn.Module, fp_model: nn.Module, batches: Sequence[dict],
                          store: ActivationStore, opts: ReconstructOptions, seed: int = 0,
                          logger=None) -> List[dict]:
    """Reconstruct every box head of ``model.roi_head`` in stage order (see the module doc);
    ``fp_model`` gives the targets (``model`` itself in float mode, or the model kept from
    before MR). ``store`` lends its memory budget (and spill folder) to the head's inputs and
    targets. Returns one report per head."""
    stages = box_heads(model.roi_head)
    stores = [(store.sibling(), store.sibling(), store.sibling()) for _ in stages]
    reports = []
    try:
        _head_data(model, fp_model, batches, opts.box_head_rois, stores)
        for s, (_, head) in enumerate(stages):
            name = f'roi_head.bbox_head.{s}' if len(stages) > 1 else 'roi_head.bbox_head'
            if len(stores[s][0]) == 0:
                raise ValueError(f'{name}: the float model proposed no RoIs on any of the '
                                 f'{len(batches)} calibration images, so the box head has '
                                 'nothing to be reconstructed on: check the calibration '
                                 'images and checkpoint, or drop reconstruct.box_head.')
            unit = Unit(name, head, lambda state, head=head: _head_outputs(head(state[0])))
            generator = seeded_generator(seed, 'reconstruct_box_head', s)
            report = reconstruct_unit(unit, *stores[s], None, opts, generator)
            report.update(stage='reconstruct', index=-4 - s, objective='mse')
            reports.append(report)
            if logger is not None:
                note = ' (kept calibrated: training did not help)' if report['reverted'] else ''
                logger.info(f"[mmq] reconstruct {name}: MSE {report['loss_before']:.4g} -> "
                            f"{report['loss_after']:.4g}, {report['seconds']:.1f} s{note}")
    finally:
        for group in stores:
            for st in group:
                st.close()
    return reports
