import pytest
import torch
import torch.nn.functional as F

from pathlib import Path

from blip_clip_loss import (CombinedLoss, LossWeights, PerceptualUnavailable, area_reference, blip_embedder,
                            boundary_loss, clip_embedder, load_detector_features, load_perceptual, perceptual_loss,
                            rate_proxy, tensor_roi_at_output, roi_loss, temporal_loss)
from errors import UserError
from roi_downsampler import DownsamplerConfig, ROIDownsampler


def tiny_clip():
    import open_clip
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


def tiny_blip():
    from transformers import BlipVisionConfig, BlipVisionModel
    torch.manual_seed(0)
    return BlipVisionModel(BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8,
                                            initializer_range=0.02))


def textured_clip(t=4, h=32, w=32):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(1, t, 3, h, w, generator=g)
    masks = torch.zeros(1, t, 1, h, w)
    masks[..., 8:24, 8:24] = 1
    return frames, masks


def blur(x, k=5):
    b = x.flatten(0, 1)
    return F.avg_pool2d(b, k, stride=1, padding=k // 2, count_include_pad=False).view_as(x)


def test_roi_loss_rises_when_the_roi_is_blurred():
    frames, masks = textured_clip()
    ref, roi = area_reference(frames, 2), tensor_roi_at_output(masks, 2)
    sharp = roi_loss(ref, ref, roi)
    blurred = ref * (1 - roi) + blur(ref) * roi
    assert sharp < 1e-4 < roi_loss(blurred, ref, roi)


def test_roi_loss_counts_small_objects_as_much_as_large_ones():
    ref = torch.rand(1, 1, 3, 16, 16)
    small, large = torch.zeros(1, 1, 1, 16, 16), torch.zeros(1, 1, 1, 16, 16)
    small[..., 2:4, 2:4], large[..., 2:14, 2:14] = 1, 1
    out = ref + 0.1
    assert float(roi_loss(out, ref, small)) == pytest.approx(float(roi_loss(out, ref, large)), rel=0.2)


def test_rate_proxy_falls_when_the_background_is_blurred():
    frames, masks = textured_clip()
    ref, roi = area_reference(frames, 2), tensor_roi_at_output(masks, 2)
    simplified = ref * roi + blur(ref) * (1 - roi)
    assert rate_proxy(simplified, roi) < rate_proxy(ref, roi)


def test_temporal_loss_punishes_flicker_not_motion_or_holding():
    frames, masks = textured_clip()
    ref, roi = area_reference(frames, 2), tensor_roi_at_output(masks, 2)
    assert temporal_loss(ref, ref, roi) == 0  # following the reference's own change is free
    held = ref[:, :1].expand_as(ref)
    assert temporal_loss(held, ref, roi) == 0  # changing less than the reference is free
    flicker = ref + 0.1 * torch.tensor([1.0, -1, 1, -1]).view(1, 4, 1, 1, 1)
    assert temporal_loss(flicker, ref, roi) > 0.05


def test_boundary_loss_charges_a_jumping_sharp_blurred_boundary():
    frames, masks = textured_clip()
    ref = area_reference(frames, 2)
    ref = ref[:, :1].expand_as(ref)               # a still scene
    still = tensor_roi_at_output(masks, 2)
    jumping = still.clone()
    jumping[:, 1::2] = torch.roll(still[:, 1::2], 4, dims=-1)  # the ROI jumps every other frame
    composite = lambda m: ref * m + blur(ref) * (1 - m)
    assert boundary_loss(composite(still), still) == 0
    hard = boundary_loss(composite(jumping), jumping)
    mild = boundary_loss(ref * jumping + blur(ref, 3) * (1 - jumping), jumping)
    assert hard > mild > 0                        # a milder background makes jumps cheaper


@pytest.mark.parametrize("make", [lambda: clip_embedder(tiny_clip()), lambda: blip_embedder(tiny_blip())])
def test_perceptual_loss_is_zero_for_identical_content_and_grows_with_damage(make):
    enc = make()
    frames, _ = textured_clip(h=64, w=64)
    ref = area_reference(frames, 2)
    same = perceptual_loss([enc], frames, ref, masks=torch.zeros_like(frames[:, :, :1]))
    damaged = perceptual_loss([enc], frames, torch.rand_like(ref), masks=torch.zeros_like(frames[:, :, :1]))
    assert same < damaged
    assert all(not p.requires_grad for p in enc.model.parameters()) and not enc.model.training


def test_missing_weights_give_one_line_error(tmp_path):
    with pytest.raises(PerceptualUnavailable, match="--perceptual_model none"):
        load_perceptual("clip", clip_pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(PerceptualUnavailable, match="--blip_model"):
        load_perceptual("blip", blip_model=str(tmp_path / "no_such_blip"))
    assert load_perceptual("none") == []


def test_a_few_hundred_steps_lower_the_combined_loss():
    torch.manual_seed(0)
    frames, masks = textured_clip(t=3, h=64, w=64)
    frames = frames + 0.05 * torch.randn(1, 3, 1, 64, 64)  # noisy, flickering background
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    loss_fn = CombinedLoss(LossWeights(perceptual=1.0), 2, [clip_embedder(tiny_clip())])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        total, parts = loss_fn(model(frames, masks), frames, masks)
        first = first if first is not None else float(total.detach())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert set(parts) == {"perceptual", "roi", "temporal", "rate", "background", "boundary"}
    assert float(total.detach()) < 0.9 * first


SHARED_PT = Path(__file__).resolve().parents[2] / "shared" / "models" / "yolov8n-seg-dq.pt"


@pytest.fixture(scope="module", params=["architecture", "coco"])
def detector_features(request):
    """The YOLOv8n-seg architecture with random weights (always), and the real COCO weights
    (../shared; skipped with one line in a user's clone)."""
    if request.param == "coco" and not SHARED_PT.is_file():
        pytest.skip(f"{SHARED_PT} not found (developers and CI only)")
    return load_detector_features("yolov8n-seg.yaml" if request.param == "architecture" else str(SHARED_PT))


def photo_clip(t=2, h=128, w=128):
    """A real photograph (scikit-image ships it), as a 2-frame clip with an ROI in the middle."""
    import skimage.data
    img = torch.from_numpy(skimage.data.astronaut()[:256, 128:384].copy()).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(h, w), mode="area")[0]
    frames = img.expand(1, t, 3, h, w).clone()
    masks = torch.zeros(1, t, 1, h, w)
    masks[..., h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    return frames, masks


def test_detector_feature_loss_is_zero_for_identical_input_and_grows_with_damage(detector_features):
    frames, masks = photo_clip()
    x2 = area_reference(frames, 2)
    same = perceptual_loss([detector_features], frames, frames, masks)  # the output at input size: identical
    mild = perceptual_loss([detector_features], frames, x2, masks)
    strong = perceptual_loss([detector_features], frames, blur(x2, 7), masks)
    noise = perceptual_loss([detector_features], frames, torch.rand_like(x2), masks)
    assert float(same) < 1e-6 < float(mild) < float(strong) < float(noise), (same, mild, strong, noise)
    assert all(not p.requires_grad for p in detector_features.model.parameters())
    assert not detector_features.model.training


def test_detector_feature_loss_is_differentiable_and_a_few_steps_lower_it(detector_features):
    frames, masks = photo_clip()
    out = blur(area_reference(frames, 2), 5).clone().requires_grad_(True)
    opt = torch.optim.Adam([out], lr=0.01)
    losses = []
    for _ in range(5):
        loss = perceptual_loss([detector_features], frames, out, masks)
        opt.zero_grad()
        loss.backward()
        assert out.grad is not None and out.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_detector_weights_are_not_part_of_the_downsampler_checkpoint(detector_features):
    loss_fn = CombinedLoss(LossWeights(), 2, [detector_features])
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    assert sum(p.numel() for p in model.parameters()) < 10_000 and len(list(loss_fn.parameters())) > 100
    with pytest.raises(UserError, match="exported"):
        load_perceptual("yolo:model.onnx")
