"""APHQ stages: APH importance, MLP Reconstruction, block reconstruction and stage resume."""
import copy
import weakref

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import mmq
from mmq.calibration import load_partial_state, save_partial_state
from mmq.calibration.aph import aph_importance, kl_task_loss, rpn_task_loss
from mmq.calibration.mlp_reconstruction import find_mlps, mlp_reconstruction
from mmq.models import QuantConfig, QuantLinear, set_quant_enabled
from .conftest import FAST_QUANT

REC = dict(iters=60, batch=4, lr=1e-3, round_lr=1e-2)


def _images(n, size=64, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                              num_classes=10, class_token=False, global_pool='avg')
    return model.eval()


def test_aph_is_hessian_times_ones_on_a_quadratic_loss():
    """For ``L = 0.5 c_b (O - R)^T A (O - R)`` the finite difference is exact:
    ``|g+ - g-| / (2 eps) = c_b |A 1|``, averaged over samples only (token x channel kept)."""
    torch.manual_seed(0)
    tokens, channels = 3, 4
    block = nn.Linear(5, channels).double()
    model = nn.Sequential(block, nn.Tanh()).double()  # the non-linear "rest of the model"
    n = tokens * channels
    m = torch.randn(n, n, dtype=torch.float64)
    a = m @ m.T + n * torch.eye(n, dtype=torch.float64)

    def forward(x):
        return block(x)  # the task loss is taken right at the block output

    def quadratic(ref, out):
        d = (out - ref).reshape(out.shape[0], -1)
        c = 1.0 + torch.arange(out.shape[0], dtype=d.dtype)  # sample-dependent curvature
        return 0.5 * (c * ((d @ a) * d).sum(-1)).sum()

    images = [torch.randn(2, tokens, 5, dtype=torch.float64) for _ in range(3)]
    h, = aph_importance(forward, quadratic, images, [block], eps=1e-3, model=model)
    assert h.shape == (tokens, channels)  # no averaging over tokens or channels
    expected = ((1.0 + 2.0) / 2) * (a @ torch.ones(n, dtype=torch.float64)).abs()
    torch.testing.assert_close(h.flatten(), expected, rtol=1e-9, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated in the model


def test_task_losses_are_zero_gradient_at_the_float_prediction():
    torch.manual_seed(0)
    cls = [torch.randn(1, 3, 4, 5, requires_grad=True)]
    reg = [torch.randn(1, 12, 4, 5, requires_grad=True)]
    fp = ([c.detach().clone() for c in cls], [r.detach().clone() for r in reg])
    fp[0][0][0, 0] = 5.0  # some confident anchors, so the smooth-L1 term is active
    perturbed = ([cls[0] + 1e-3], [reg[0] + 1e-3])
    loss = rpn_task_loss(fp, perturbed)
    assert torch.isfinite(loss) and loss > 0
    z = torch.randn(4, 10)
    assert float(kl_task_loss(z, z)) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_task_loss(z, z + torch.randn(4, 10))) > 0


def test_task_loss_gradients_vanish_at_the_float_output_only():
    """The APH task losses are minimal at the float prediction: their gradient w.r.t. the
    prediction is zero there and not zero off it (what makes |g+ - g-| a curvature)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 10, generator=g, dtype=torch.float64)
    at = z.clone().requires_grad_(True)
    (grad, ) = torch.autograd.grad(kl_task_loss(z, at), at)
    assert float(grad.abs().max()) < 1e-12
    off = (z + 0.5 * torch.randn(4, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    (grad, ) = torch.autograd.grad(kl_task_loss(z, off), off)
    assert float(grad.abs().max()) > 1e-6  # T = 20 and the batch mean make it small
    # RPN loss: each term is divided by its own detached value (which is 0 at the float
    # prediction, where the loss is exactly 0: its minimum); off it, a finite, non-zero
    # gradient.
    fc = [torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64)]
    fr = [torch.randn(1, 12, 4, 5, generator=g, dtype=torch.float64)]
    assert float(rpn_task_loss((fc, fr), (fc, fr), objectness_thr=2.0)) == 0.0
    cls = [(fc[0] + 0.3).requires_grad_(True)]
    (grad, ) = torch.autograd.grad(rpn_task_loss((fc, fr), (cls, [fr[0].clone()]),
                                                 objectness_thr=2.0), cls)
    assert torch.isfinite(grad).all()
    assert float(grad.abs().max()) > 1e-6  # the loss is divided by its own value: O(1/N)


def test_mr_lowers_the_weighted_error_monotonically_and_keeps_outputs(vit):
    model = copy.deepcopy(vit)
    images = _images(4)
    opts = QuantConfig(mr=dict(iters=60, batch=4096, rows=512, lr=2e-3)).mr_options()
    report = mlp_reconstruction(model, model, model, kl_task_loss, 1e-6, images, opts,
                                checkpoints=6)
    assert len(report['mlps']) == 2
    assert all(isinstance(m.act, nn.ReLU) for m in find_mlps(model))
    for mlp in report['mlps']:
        curve = mlp['loss_curve']
        # Full-batch Adam on the weighted loss: every checkpoint is at or below the previous.
        assert all(b <= a * (1 + 1e-6) for a, b in zip(curve, curve[1:])), curve
        assert curve[-1] < 0.5 * curve[0]
        assert mlp['ub'] > 0
    # Measured ~33 dB on this model; the ReLU model stays a close copy of the GELU one.
    assert report['output_sqnr_db'] > 25


def test_mr_least_squares_fc2_start_beats_the_gelu_weights_start(vit):
    """``fc2_init='lstsq'``: before any training step fc2 is the ridge fit of the GELU MLP's
    output on the ReLU hidden rows, so the weighted loss starts far below the published start
    (GELU weights under ReLU) and the model output stays closer to the float model."""
    images = _images(8)
    runs = {}
    for init in ('none', 'lstsq'):
        model = copy.deepcopy(vit)
        opts = QuantConfig(mr=dict(iters=1, batch=64, rows=2048, lr=1e-12,
                                   fc2_init=init)).mr_options()
        runs[init] = mlp_reconstruction(model, model, model, kl_task_loss, 1e-6, images, opts)
    for plain, fitted in zip(runs['none']['mlps'], runs['lstsq']['mlps']):
        assert fitted['loss_start'] < 0.5 * plain['loss_start'], (plain, fitted)
    assert runs['lstsq']['output_sqnr_db'] > runs['none']['output_sqnr_db'] + 3
    with pytest.raises(ValueError, match="fc2_init='ridge' must be 'none'"):
        QuantConfig(mr=dict(fc2_init='ridge'))


def test_mr_keeps_the_best_checkpoint_when_training_raises_the_loss(vit):
    """Adam steps that raise the weighted loss (here a far too large learning rate from the
    least-squares start) do not stay: each MLP keeps the weights of its lowest checkpoint
    loss, the start included, and reports which step it kept."""
    model = copy.deepcopy(vit)
    opts = QuantConfig(mr=dict(iters=20, batch=64, rows=2048, lr=1.0,
                               fc2_init='lstsq')).mr_options()
    report = mlp_reconstruction(model, model, model, kl_task_loss, 1e-6, _images(8), opts)
    for mlp in report['mlps']:
        assert mlp['loss_last'] > mlp['loss_start'], mlp  # the steps diverged ...
        assert mlp['loss_end'] == min(mlp['loss_curve']) <= mlp['loss_start']  # ... not kept
    assert any(mlp['kept_step'] == 0 for mlp in report['mlps'])
    fitted = copy.deepcopy(vit)  # the start alone (no step), for the MLPs that kept it
    start = QuantConfig(mr=dict(iters=1, batch=64, rows=2048, lr=1e-12,
                                fc2_init='lstsq')).mr_options()
    mlp_reconstruction(fitted, fitted, fitted, kl_task_loss, 1e-6, _images(8), start)
    for mlp, a, b in zip(report['mlps'], find_mlps(model), find_mlps(fitted)):
        if mlp['kept_step'] == 0:
            torch.testing.assert_close(a.fc2.weight, b.fc2.weight)


def _w3a3(**kw):
    return dict(FAST_QUANT, w_bits=3, a_bits=3, **kw)


def test_reconstruction_lowers_each_block_error_below_calibration_only(vit):
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, _images(4), _w3a3(stages=['calibrate', 'reconstruct'],
                                                   reconstruct=REC))
    rec = [u for u in report['units'] if u['stage'] == 'reconstruct']
    assert [u['unit'] for u in rec] == ['patch_embed', 'blocks.0', 'blocks.1', 'head']
    for u in rec:
        assert u['loss_trained'] < u['loss_before'], u
        assert not u['reverted']
    assert report['stages_done'] == ['calibrate', 'reconstruct']
    # The learned rounding lives in the weight quantizers; float mode is still the float model.
    assert sum(m.weight_quantizer.rounding.numel() > 0 for m in model.modules()
               if isinstance(m, QuantLinear)) == 9
    x = _images(1, seed=3)[0]
    with torch.no_grad():
        ref = vit(x)
        set_quant_enabled(model, False)
        floated = model(x)
    torch.testing.assert_close(floated, ref, rtol=0, atol=1e-4)


def test_killed_reconstruction_resumes_to_the_uninterrupted_state(vit, tmp_path):
    cfg = _w3a3(stages=['mr', 'calibrate', 'reconstruct'], reconstruct=REC,
                mr=dict(iters=20, batch=256, rows=256, lr=1e-3))
    qcfg = QuantConfig.from_dict(cfg)
    images = _images(3)
    full = copy.deepcopy(vit)
    mmq.quantize(full, images, cfg)

    path = str(tmp_path / 'partial.pth')
    crashed = copy.deepcopy(vit)
    stages_done = []

    def save_then_crash(report):
        if report['stage'] == 'reconstruct':
            save_partial_state(crashed, path, qcfg, report['index'] + 1, [report],
                               'reconstruct', stages_done)
            if report['index'] == 1:
                raise KeyboardInterrupt  # killed mid-stage, after 2 of 4 blocks

    def on_stage(stage, done, rep):
        stages_done[:] = done

    with pytest.raises(KeyboardInterrupt):
        mmq.quantize(crashed, images, cfg, on_unit_done=save_then_crash, on_stage_done=on_stage)
    partial = load_partial_state(path)
    assert partial['stage'] == 'reconstruct' and partial['units_done'] == 2
    assert partial['stages_done'] == ['mr', 'calibrate']

    resumed = copy.deepcopy(vit)
    report = mmq.quantize(resumed, images, cfg, resume=partial)
    assert [u['unit'] for u in report['units'] if u['stage'] == 'reconstruct'][-2:] == [
        'blocks.1', 'head'
    ]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # A state from other settings of a finished stage is refused.
    with pytest.raises(ValueError, match='another quant_cfg'):
        mmq.quantize(copy.deepcopy(vit), images, dict(cfg, mr=dict(iters=5)), resume=partial)


def test_stage_options_are_checked():
    with pytest.raises(ValueError, match='stages'):
        QuantConfig(stages=['reconstruct'])
    with pytest.raises(ValueError, match='unknown quant_cfg.reconstruct'):
        QuantConfig(reconstruct=dict(iterations=5))
    with pytest.raises(ValueError, match='positive integer'):
        QuantConfig(mr=dict(iters=0))
    with pytest.raises(ValueError, match='pass_bytes=0 must be a positive integer'):
        QuantConfig(reconstruct=dict(pass_bytes=0))
    assert QuantConfig(reconstruct=dict(pass_bytes=None)).reconstruct_options().pass_bytes is None
    # The box head is only quantized (so only reconstructed) at detector scope.
    with pytest.raises(ValueError, match="box_head=True .* scope='detector'"):
        QuantConfig(reconstruct=dict(box_head=True))
    with pytest.raises(ValueError, match="box_head='yes' must be True or False"):
        QuantConfig(scope='detector', reconstruct=dict(box_head='yes'))
    with pytest.raises(ValueError, match='box_head_rois=0 must be a positive integer'):
        QuantConfig(scope='detector', reconstruct=dict(box_head=True, box_head_rois=0))
    assert QuantConfig(scope='detector',
                       reconstruct=dict(box_head=True)).reconstruct_options().box_head
    # ... of a two-stage detector: a bare backbone is refused before any work.
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                            num_classes=0)
    with pytest.raises(ValueError, match='box_head=True .* has none'):
        mmq.quantize(vit, [torch.randn(1, 3, 32, 32)],
                     dict(scope='detector', stages=['calibrate', 'reconstruct'],
                          reconstruct=dict(box_head=True)))


def test_stages_through_the_hook_save_stage_results_and_restart_from_one(shapes_data, tmp_path):
    """All three stages on a narrow Swin Mask R-CNN through Runner.test(): every stage's
    result lands in the work dir; a second run started from ``stage_calibrate.pth`` only
    reconstructs and ends in the same state; the saved state reloads (ReLU MLPs included)."""
    from mmengine.runner import Runner
    from mmq.calibration.work_dir import PARTIAL_FILE, STATE_FILE
    from .conftest import swin_config
    quant = dict(FAST_QUANT, stages=['mr', 'calibrate', 'reconstruct'],
                 mr=dict(iters=5, batch=256, rows=256),
                 reconstruct=dict(iters=3, batch=2))

    def narrow(cfg):  # a 1-block-per-stage Swin keeps the test in the CI budget
        # Seeded random weights: after MR, reconstruction's targets come from the float
        # model as it is at the start of each run, so both runs must start from the same one.
        cfg.randomness = dict(seed=0)
        cfg.model.backbone.update(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
        cfg.model.neck.in_channels = [32, 64, 128, 256]
        return cfg

    first = str(tmp_path / 'first')
    cfg = narrow(swin_config(shapes_data, first, quant, tmp_path))
    torch.manual_seed(0)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    for stage in ('mr', 'calibrate', 'reconstruct'):
        assert (tmp_path / 'first' / f'stage_{stage}.pth').is_file()
    assert not (tmp_path / 'first' / PARTIAL_FILE).exists()  # finished: no partial left
    calibrated = load_partial_state(str(tmp_path / 'first' / 'stage_calibrate.pth'))
    assert calibrated['stages_done'] == ['mr', 'calibrate']
    assert calibrated['stage'] == 'reconstruct'

    cfg2 = narrow(swin_config(shapes_data, str(tmp_path / 'second'), quant, tmp_path))
    cfg2.custom_hooks[0]['resume_from'] = str(tmp_path / 'first' / 'stage_calibrate.pth')
    torch.manual_seed(0)
    runner2 = Runner.from_cfg(cfg2)
    runner2.test()
    a = torch.load(str(tmp_path / 'first' / STATE_FILE), weights_only=True)['state_dict']
    b = torch.load(str(tmp_path / 'second' / STATE_FILE), weights_only=True)['state_dict']
    assert a.keys() == b.keys(), set(a) ^ set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    cfg3 = narrow(swin_config(shapes_data, str(tmp_path / 'third'), quant, tmp_path))
    cfg3.custom_hooks[0]['load_state'] = str(tmp_path / 'first' / STATE_FILE)
    torch.manual_seed(0)
    reloaded = Runner.from_cfg(cfg3).test()
    assert reloaded == metrics


def test_rms_normalise_survives_huge_importances():
    from mmq.calibration.aph import rms_normalise
    h = torch.tensor([[1e30, 3e30], [0.0, 2e30]])  # h^2 overflows float32
    out = rms_normalise(h)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.pow(2).mean(), torch.tensor(1.0))
    torch.testing.assert_close(out / out.max(), h / h.max())
    with pytest.raises(ValueError, match='not finite'):
        rms_normalise(torch.tensor([1.0, float('nan')]).nan_to_num(nan=float('inf')))


def test_reconstruction_streams_from_disk_with_the_same_result(vit, tmp_path):
    """With a zero memory budget every block input (quantized and float chains, float
    outputs) is spilled to disk and read back per step: same state as in memory."""
    cfg = _w3a3(stages=['calibrate', 'reconstruct'], reconstruct=dict(REC, iters=10))
    images = _images(3)
    in_memory, on_disk = copy.deepcopy(vit), copy.deepcopy(vit)
    mmq.quantize(in_memory, images, cfg)
    mmq.quantize(on_disk, images, cfg, activation_budget_bytes=0,
                 spill_dir=str(tmp_path / 'spill'))
    a, b = in_memory.state_dict(), on_disk.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / 'spill').iterdir())  # spilled files are removed afterwards


def test_mr_reads_spilled_images_one_at_a_time(vit, tmp_path, monkeypatch):
    """MR streams the calibration images from the store: with every image spilled, at most a
    few are alive at once (the APH images), never the whole set (a list of them held 256
    full-size Swin-T images, 3.3 GB, past the activation budget)."""
    from mmq.calibration.activation_store import ActivationStore
    alive, most = [], [0]
    read = ActivationStore.__getitem__

    def tracked(self, index):
        item = read(self, index)
        alive[:] = [r for r in alive if r() is not None]
        alive.append(weakref.ref(item[0]))
        most[0] = max(most[0], len(alive))
        return item

    monkeypatch.setattr(ActivationStore, '__getitem__', tracked)
    cfg = _w3a3(stages=['mr', 'calibrate'], mr=dict(iters=2, batch=64, rows=128, aph_images=2))
    mmq.quantize(copy.deepcopy(vit), _images(12), cfg, activation_budget_bytes=0,
                 spill_dir=str(tmp_path / 'spill'))
    assert 0 < most[0] <= 4, most[0]


def test_mr_captured_rows_are_the_seeded_rows_of_each_image(vit):
    """The capture writes into buffers allocated once; the rows are each image's seeded
    random rows, in image order, with their token positions (batches of 1 and 2 mixed)."""
    from mmq.calibration.mlp_reconstruction import _capture_mlp_inputs
    from mmq.utils import seeded_generator
    images = _images(3) + _images(2, batch=1, seed=1)
    mlps = find_mlps(vit)
    inputs = {id(m.module): [] for m in mlps}
    handles = [m.module.register_forward_pre_hook(
        lambda mod, args: inputs[id(mod)].append(args[0].detach().clone())) for m in mlps]
    with torch.no_grad():
        for img in images:
            vit(img)
    for h in handles:
        h.remove()
    rows = 40  # 8 per image
    got = _capture_mlp_inputs(mlps, vit, images, rows, seeded_generator(0, 'mr'))
    g = seeded_generator(0, 'mr')
    want = {id(m.module): [] for m in mlps}
    for k in range(len(images)):
        for m in mlps:  # the hooks fire in module order within each image
            x = inputs[id(m.module)][k]
            flat = x.reshape(-1, x.shape[-1])
            idx = torch.randperm(flat.shape[0], generator=g)[:8]
            want[id(m.module)].append((flat[idx], idx % x.shape[1]))
    for m, (x, pos) in zip(mlps, got):
        assert x.shape == (40, vit.embed_dim)
        assert torch.equal(x, torch.cat([a for a, _ in want[id(m.module)]]))
        assert torch.equal(pos, torch.cat([p for _, p in want[id(m.module)]]))
