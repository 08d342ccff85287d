import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkpoint import VERSION as CHECKPOINT_VERSION, load_model, save as save_checkpoint
from engine import frames_to_tensor, tensor_to_frames
from roi_downsampler import (PARAM_NAMES, DownsamplerConfig, ROIDownsampler, area_pool, area_pool_uint8, box_blur,
                             count_parameters, dilate, erode, max_pool, upsample)
from errors import UserError


def clip(b=1, t=4, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(b, 1, 3, h, w, generator=g) * 0.9 + 0.05 * torch.rand(b, t, 3, h, w, generator=g))
    masks = torch.zeros(b, t, 1, h, w)
    for i in range(t):  # an object moving right: the temporal mask gate has work to do
        masks[:, i, :, 8:20, 4 + 8 * i:20 + 8 * i] = 1
    return frames, masks


@pytest.mark.parametrize("s,h,w", [(2, 32, 48), (4, 32, 48), (2, 33, 49), (4, 37, 50)])
def test_shapes_for_scales_and_odd_sizes(s, h, w):
    model = ROIDownsampler(DownsamplerConfig(scale_factor=s))
    out = model(*clip(b=2, t=3, h=h, w=w))
    assert out.frames.shape == (2, 3, 3, h // s, w // s)
    assert out.masks.shape == (2, 3, 1, h // s, w // s)
    assert out.params.shape == (2, 3, len(PARAM_NAMES))


def test_untrained_model_is_area_downscaling():
    frames, masks = clip()
    out = ROIDownsampler(DownsamplerConfig(scale_factor=2))(frames, masks)
    area = F.avg_pool2d(frames.flatten(0, 1), 2).view_as(out.frames)
    assert (out.frames - area).abs().max() < 2e-3


def test_params_are_within_their_documented_ranges():
    from roi_downsampler import PARAM_SPECS
    model = ROIDownsampler()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 3)
    params = model(*clip()).params
    for i, (lo, hi, _) in enumerate(PARAM_SPECS.values()):
        assert (params[..., i] >= lo).all() and (params[..., i] <= hi).all()


@pytest.mark.parametrize("chunk", [1, 3])
def test_streaming_equals_whole_clip(chunk):
    torch.manual_seed(0)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2)).eval()
    with torch.no_grad():
        for p in model.parameters():  # a non-trivial model: every part active
            p.add_(torch.randn_like(p) * 0.3)
        frames, masks = clip(t=7)
        whole = model(frames, masks)
        state, outs, soft = None, [], []
        for t0 in range(0, 7, chunk):
            o = model(frames[:, t0:t0 + chunk], masks[:, t0:t0 + chunk], state)
            state = o.state
            outs.append(o.frames), soft.append(o.masks)
    assert torch.allclose(torch.cat(outs, 1), whole.frames, atol=1e-6)
    assert torch.allclose(torch.cat(soft, 1), whole.masks, atol=1e-6)


def test_gradient_reaches_every_part():
    torch.manual_seed(0)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    with torch.no_grad():
        for p in model.parameters():  # away from the zero init, where some paths are gated off
            p.add_(torch.randn_like(p) * 0.1)
    frames, masks = clip(t=3)
    out = model(frames, masks)
    (out.frames.square().mean() + out.masks.mean()).backward()
    for name, p in model.named_parameters():
        if name.startswith("analyzer.gate."):  # fitted against x264 by calibrate_gate.py, frozen here
            assert not p.requires_grad and p.grad is None
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_budget():
    assert count_parameters(ROIDownsampler(DownsamplerConfig(scale_factor=4))) <= 500_000


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = ROIDownsampler(DownsamplerConfig(scale_factor=4))
    with torch.no_grad():
        model.detail[2].weight.fill_(0.01)
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, train_args={"epochs": 1}, metrics={"val": 1.0})
    loaded, ckpt = load_model(path, expected_scale=4)
    assert torch.equal(loaded.detail[2].weight, model.detail[2].weight)
    assert ckpt["train_args"] == {"epochs": 1} and ckpt["format_version"] == CHECKPOINT_VERSION
    with pytest.raises(UserError, match="x4"):
        load_model(path, expected_scale=2)
    corrupt = tmp_path / "bad.pth"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt, truncated"):
        load_model(corrupt)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not an ROI downsampler"):
        load_model(tmp_path / "other.pth")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pth")


def test_mask_core_fills_holes_but_never_grows_the_outline():
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    mask = torch.zeros(1, 1, 1, 64, 64)
    mask[..., 8:32, 8:32] = 1
    mask[..., 16:24, 16:24] = 0          # a hole (4x4 output pixels)
    mask[..., 0:10, 54:64] = 1           # an object at the border, well apart from the other
    with torch.no_grad():
        model.analyzer.head[2].bias[PARAM_NAMES.index("mask_feather")] = -20.0  # no halo
        soft = model(torch.rand(1, 1, 3, 64, 64), mask).masks[0, 0, 0]
    roi = F.max_pool2d(mask[0, 0], 2)[0]
    assert (soft[8:12, 8:12] > 0.99).all()             # the hole is filled
    assert (soft[roi > 0] > 0.99).all()                # every ROI pixel is on the sharp path
    assert soft[roi == 0].sum() <= 16 + 1e-3           # nothing but the hole was added


@pytest.mark.parametrize("s", [2, 4])
def test_uint8_frames_give_what_float_frames_give(s):
    """Inference hands the network uint8 frames (only the objects' blocks are converted): the area
    downscale is the float one, and the output the same to the last level but for float rounding."""
    frames, masks = clip(b=1, t=3, h=32, w=48)
    u8 = frames_to_tensor((frames.movedim(-3, -1) * 255).round().byte().numpy())
    x = u8.float() / 255
    assert u8.dtype == torch.uint8
    assert torch.allclose(area_pool_uint8(u8[0], s), area_pool(x[0], s), atol=1e-6)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=s))
    with torch.no_grad():
        model.detail[2].weight.normal_(0, 0.1)  # a detail path that adds something
        a, b = tensor_to_frames(model(u8, masks).frames), tensor_to_frames(model(x, masks).frames)
    assert np.abs(a.astype(int) - b).max() <= 1 and (a != b).mean() < 0.01


def test_tensor_to_frames_rounds_clamps_and_leaves_its_input_alone():
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 0.3, 1.0, 1.7]).view(1, 1, 7).expand(3, 1, 7).clone()
    before = x.clone()
    got = tensor_to_frames(x)  # (1, 7, 3)
    assert got.shape == (1, 7, 3) and got.dtype == np.uint8
    assert got[0, :, 0].tolist() == [0, 0, 0, 2, 76, 255, 255]  # half to even (0.3 * 255 = 76.5 in float32)
    assert torch.equal(x, before)
    y = torch.rand(2, 3, 5, 6).movedim(1, -1).contiguous().movedim(-1, 1)  # channels-last strides
    assert np.array_equal(tensor_to_frames(y), (y.clamp(0, 1) * 255).round().byte().movedim(1, -1).numpy())
    for c in (1, 2, 3, 4):  # one frame: interleaved by OpenCV
        z = torch.rand(c, 5, 6)
        assert np.array_equal(tensor_to_frames(z), (z * 255).round().byte().movedim(0, -1).numpy())


def nontrivial_model(s=2):
    torch.manual_seed(0)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=s)).eval()
    with torch.no_grad():
        for p in model.parameters():  # every part active
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_streaming_with_the_work_made_ahead_gives_the_same_frames_and_masks():
    import engine
    model = nontrivial_model()
    frames, masks = clip(t=11)
    frames = [(f * 255).round().byte().permute(1, 2, 0).numpy() for f in frames[0]]  # as decoded: uint8 (H, W, 3)
    masks = [m[0].numpy() for m in masks[0]]
    plain = engine.downsample(model, frames, masks, batch=3, with_masks=True)
    featured = model.analyzer.frame_features
    calls = []
    model.analyzer.frame_features = lambda *a: calls.append(1) or featured(*a)
    chunks = list(engine.stream(model, engine.prepared(model, zip(frames, masks)), batch=3))
    assert all(np.array_equal(a, b) for a, b in zip([i for c in chunks for i in c.images], plain[0]))
    assert all(np.array_equal(a, b) for a, b in zip([m for c in chunks for m in c.softs], plain[1]))
    # made once per frame ahead (+ the gate's priming), never again in step()
    assert len(calls) == len(frames) + min(len(frames), model.cfg.gate_lookahead)


def test_work_made_ahead_from_another_previous_frame_is_not_used():
    model = nontrivial_model()
    frames, masks = clip(t=3)
    with torch.no_grad():
        state = None
        for t in range(2):
            _, _, _, state = model.step(frames[:, t], masks[:, t], state)
        wrong = model.ahead(model.prepare(frames[:, 2], masks[:, 2]), None)  # as if frame 2 came first
        out, soft, _, _ = model.step(frames[:, 2], masks[:, 2], state, wrong)
        want, want_soft, _, _ = model.step(frames[:, 2], masks[:, 2], state)
    assert torch.equal(out, want) and torch.equal(soft, want_soft)


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 3, 40, 64)])
def test_fast_pooling_ops_equal_torch_reference(shape):
    """The strided-view / separable versions used for speed compute what the torch ops compute,
    including partial blocks at odd sizes and the borders of the max and box filters."""
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for k in (3, 5):
        assert torch.equal(dilate(x, k), F.max_pool2d(x, k, stride=1, padding=k // 2))  # OpenCV's (inference)
        assert torch.equal(dilate(x.clone().requires_grad_(), k).detach(), dilate(x, k))  # training's
        r = k // 2
        assert torch.equal(erode(x, k), 1 - F.max_pool2d(F.pad(1 - x, (r, r, r, r), value=1.0), k, stride=1))
        ref = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
        assert torch.allclose(box_blur(x, k), ref, atol=1e-6)
        pool = lambda z, kernel, pad: F.avg_pool2d(z, kernel, stride=1, padding=pad, count_include_pad=False)
        assert torch.equal(box_blur(x, k), pool(pool(x, (1, k), (0, r)), (k, 1), (r, 0)))  # its separable floats
    for s in (2, 4):
        assert torch.equal(max_pool(x, s), F.max_pool2d(x, s, ceil_mode=True))
        assert torch.allclose(area_pool(x, s), F.avg_pool2d(x, s, ceil_mode=True), atol=1e-6)  # OpenCV's if it can
        assert torch.allclose(area_pool(x.clone().requires_grad_(), s), area_pool(x, s), atol=1e-6)  # training's
    for size in ((2 * shape[2], 2 * shape[3]), (shape[2] + 7, shape[3] + 3), (shape[2] * 4 - 1, shape[3] * 3)):
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        assert upsample(x, size).shape == ref.shape and torch.allclose(upsample(x, size), ref, atol=1e-5)


def test_primed_gate_decides_the_first_frame_from_the_first_frames():
    """prime(): the gate's first decision uses what the first frames show (here: everything
    moves, which this gate is set to answer with 'closed'), instead of a one-frame guess."""
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2)).eval()
    with torch.no_grad():
        model.analyzer.gate.weight.copy_(torch.tensor([[0.0, -20.0, 0.0, 0.0]]))  # motion closes it
        model.analyzer.gate.bias.fill_(20 * -4.0)  # open while log(motion) < -4 (motion < ~0.02)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 8, 3, 32, 48, generator=g)  # every frame different: strong motion
    masks = torch.zeros(1, 8, 1, 32, 48)
    gate = PARAM_NAMES.index("bg_gate")
    with torch.no_grad():
        cold = model(frames, masks).params[0, 0, gate]
        primed = model(frames, masks, model.prime(frames, masks)).params[0, 0, gate]
    assert cold > 0.99 and primed < 0.01


def test_prime_summarises_the_first_frames_exactly_as_step_does():
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2)).eval()
    frames, masks = clip(t=6)
    with torch.no_grad():
        state = None
        for t in range(6):
            _, _, _, state = model.step(frames[:, t], masks[:, t], state)
        primed = model.prime(frames, masks)
    assert primed.frames_seen == 6 and torch.allclose(primed.stats_ema, state.stats_ema, atol=1e-6)
    assert primed.prev_base is None and primed.feature_ema is None  # everything else starts fresh


@pytest.mark.parametrize("s", [2, 4])
@pytest.mark.parametrize("decoded", [False, True])
def test_inference_detail_over_the_mask_alone_equals_the_full_frame_path(s, decoded):
    """Inference computes the ROI detail only where the soft mask reaches: the same output as
    training's full-frame path, on a frame where most of the view is far from any object -- for
    float frames and for uint8 frames laid out as decoded ((H, W, 3) rows, as inference hands them over)."""
    torch.manual_seed(0)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=s)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    frames, _ = clip(t=3, h=160, w=256)
    if decoded:
        frames = (frames * 255).round().to(torch.uint8).movedim(2, -1).contiguous().movedim(-1, 2)
    masks = torch.zeros(1, 3, 1, 160, 256)
    for i in range(3):  # an object in the middle, moving: the crop starts away from the borders
        masks[:, i, :, 64:96, 120 + 8 * i:160 + 8 * i] = 1
    with torch.enable_grad():
        full = model(frames, masks)
    with torch.no_grad():
        cropped = model(frames, masks)
    assert (cropped.masks == 0).float().mean() > 0.2  # the crop is a real crop
    assert (full.params[..., PARAM_NAMES.index("roi_detail")] > 0.1).all()
    assert torch.allclose(cropped.frames, full.frames.detach(), atol=1e-5)
