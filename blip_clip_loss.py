"""Losses that train the ROI downsampler.

    total = perceptual_weight * perceptual   (a frozen detector's features, or CLIP / BLIP embeddings)
          + roi_weight        * roi          (L1 + SSIM to the area reference, inside the ROI)
          + temporal_weight   * temporal     (output flicker beyond the reference's own change)
          + rate_weight       * rate         (what an encoder pays for: background texture and change)
          + boundary_weight   * boundary     (change where the sharp/simplified boundary moved)
          + background_weight * background   (keeps the simplified background recognisable)

The reference everywhere is the area-downscaled input: it is what the field compares against,
and matching it inside the ROI is what "objects stay sharp and faithful" means at low resolution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP / BLIP preprocessing statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EPS = 1e-6


class PerceptualUnavailable(UserError):
    """Encoder weights missing (offline, wrong path)."""


# ----------------------------------------------------------------------------- encoders


class ImageEmbedder(nn.Module):
    """Frozen image encoder: resize to its input size, normalise, embed, L2-normalise. Its distance
    is 1 - cosine similarity of the embeddings (the whole image, no ROI)."""

    def __init__(self, encode, image_size: int, name: str):
        super().__init__()
        self.encode, self.image_size, self.name = encode, image_size, name
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
        return F.normalize(self.encode((x - self.mean) / self.std), dim=-1)

    def distance(self, original, output, roi) -> torch.Tensor:
        with torch.no_grad():
            target = self(original)
        return (1 - (self(output) * target).sum(-1)).mean()


class DetectorFeatures(nn.Module):
    """A frozen YOLO detector's backbone and neck: the feature maps its detection head reads (P3,
    P4, P5 for YOLOv8). What a detector still sees in the output is what an analytics user needs.

    The output is brought back to the input size (bilinear, as a downstream detector is fed a
    low-resolution stream) and both images go through the network; the distance is LPIPS-like:
    features unit-normalised over channels, squared differences summed over channels, averaged
    over positions with the ROI weighted ROI_EMPHASIS times the background, and over the scales."""

    ROI_EMPHASIS = 3.0

    def __init__(self, model: nn.Module, name: str = "yolo"):
        super().__init__()
        self.model, self.name = _freeze(model), name
        self.taps = list(model.model[-1].f)  # the head's inputs

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        h, w = images.shape[-2:]
        x = F.pad(images, (0, -w % 32, 0, -h % 32), mode="replicate")  # YOLO strides need multiples of 32
        y = []
        for m in self.model.model[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.model.save or m.i in self.taps else None)
        return [F.normalize(y[i], dim=1, eps=EPS) for i in self.taps]

    def distance(self, original, output, roi) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(original)
        seen = F.interpolate(output, size=original.shape[-2:], mode="bilinear", align_corners=False)
        total = 0.0
        for f, t in zip(self.features(seen), target):
            weight = 1 + (self.ROI_EMPHASIS - 1) * F.adaptive_max_pool2d(roi, f.shape[-2:])
            total = total + ((f - t) ** 2).sum(1, keepdim=True).mul(weight).sum((1, 2, 3)).div(
                weight.sum((1, 2, 3))).mean()
        return total / len(target)


def load_detector_features(path: str) -> DetectorFeatures:
    """The frozen features of an Ultralytics YOLO .pt (segmentation or detection), loaded safely."""
    from roi_sources import YoloUnavailable, load_yolo
    if not str(path).endswith((".pt", ".yaml")):
        raise UserError(f"--perceptual_model yolo:{path}: needs PyTorch weights (.pt), gradients cannot flow "
                        f"through an exported model")
    task = "detect" if "-seg" not in Path(path).name else "segment"
    try:
        yolo = load_yolo(str(path), task=task, flag="--perceptual_model yolo:PATH")
    except YoloUnavailable as e:
        raise PerceptualUnavailable(f"{e}; or --perceptual_model none") from None
    return DetectorFeatures(yolo.model.float().cpu(), f"yolo:{Path(path).name}")


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def clip_embedder(model) -> ImageEmbedder:
    """Wrap an open_clip CLIP model (pretrained or a tiny random one in tests)."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    emb = ImageEmbedder(model.encode_image, int(size), "clip")
    emb.model = _freeze(model)
    return emb


def blip_embedder(vision_model) -> ImageEmbedder:
    """Wrap a transformers BlipVisionModel: its pooled output is the image feature."""
    emb = ImageEmbedder(lambda x: vision_model(pixel_values=x).pooler_output,
                        int(vision_model.config.image_size), "blip")
    emb.model = _freeze(vision_model)
    return emb


def hub_reachable() -> bool:
    """Can the Hugging Face hub be resolved? Checked up front so that an offline machine fails in
    milliseconds instead of after a minute of download retries."""
    import socket
    from urllib.parse import urlparse
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def load_clip(model_name: str = "ViT-B-32", pretrained: str = "openai") -> ImageEmbedder:
    """open_clip model by name with a pretrained tag (downloaded) or a local checkpoint file."""
    import open_clip
    fix = "pass --clip_pretrained /path/to/open_clip_model.safetensors, or --perceptual_model none"
    if not Path(pretrained).is_file() and not hub_reachable():
        raise PerceptualUnavailable(f"CLIP {model_name} weights '{pretrained}' are not a local file and the "
                                    f"model hub is unreachable (offline): {fix}")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained)
    except Exception as e:
        raise PerceptualUnavailable(f"CLIP {model_name} weights '{pretrained}' could not be loaded "
                                    f"({type(e).__name__}): {fix}") from None
    return clip_embedder(model)


def load_blip(name_or_path: str = "Salesforce/blip-image-captioning-base") -> ImageEmbedder:
    """BLIP vision tower from a hub id or a local folder (transformers)."""
    from transformers import BlipForConditionalGeneration
    local = Path(name_or_path).is_dir()
    try:  # offline, a hub id can still come from the local Hugging Face cache
        full = BlipForConditionalGeneration.from_pretrained(name_or_path, local_files_only=local or not hub_reachable())
    except Exception as e:
        raise PerceptualUnavailable(
            f"BLIP '{name_or_path}' could not be loaded ({type(e).__name__}; offline?): pass --blip_model "
            f"/path/to/a/saved/blip folder, or --perceptual_model clip|none") from None
    return blip_embedder(full.vision_model)


def load_perceptual(kind: str, clip_model="ViT-B-32", clip_pretrained="openai",
                    blip_model="Salesforce/blip-image-captioning-base") -> list[nn.Module]:
    """Encoders for --perceptual_model yolo:PATH|clip|blip (joined by +) or none (loaded once, frozen)."""
    if kind == "none":
        return []
    parts = kind.split("+")
    if not all(p in ("clip", "blip") or p.startswith("yolo:") for p in parts):
        raise UserError(f"--perceptual_model {kind}: choose yolo:PATH (a YOLO .pt), clip, blip, several joined "
                        f"by +, or none")
    loaders = {"clip": lambda: load_clip(clip_model, clip_pretrained), "blip": lambda: load_blip(blip_model)}
    return [loaders[p]() if p in loaders else load_detector_features(p[len("yolo:"):]) for p in parts]


# ----------------------------------------------------------------------------- loss terms


def area_reference(frames: torch.Tensor, s: int) -> torch.Tensor:
    """(B,T,3,H,W) -> area-downscaled (B,T,3,H/s,W/s), cropped like the network crops: the torch
    twin of video_io.area_downscale, for the losses."""
    b, t, c, h, w = frames.shape
    x = frames[..., : h - h % s, : w - w % s].flatten(0, 1)
    return F.avg_pool2d(x, s).unflatten(0, (b, t))


def tensor_roi_at_output(masks: torch.Tensor, s: int) -> torch.Tensor:
    """Binary ROI at output resolution: any ROI pixel in the s x s cell counts (the torch twin of
    metrics.roi_at_output, which the evaluation scores with)."""
    b, t, c, h, w = masks.shape
    x = masks[..., : h - h % s, : w - w % s].flatten(0, 1)
    return (F.avg_pool2d(x, s) > 0).float().unflatten(0, (b, t))


def tensor_ssim_map(x: torch.Tensor, y: torch.Tensor, k: int = 7) -> torch.Tensor:
    """Per-pixel SSIM (box window), images in [0,1], any leading dims flattened."""
    shape = x.shape
    x, y = x.reshape(-1, *shape[-3:]), y.reshape(-1, *shape[-3:])
    pool = lambda z: F.avg_pool2d(z, k, stride=1, padding=k // 2, count_include_pad=False)
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.reshape(shape)


def masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of x where weight is on, normalised per sample by the weighted area (so small objects
    count as much as large ones), then averaged over the batch."""
    dims = tuple(range(1, x.dim()))
    num = (x * weight).sum(dims)
    den = (weight.expand_as(x)).sum(dims)
    return (num / (den + EPS)).mean()


def roi_loss(out, ref, roi):
    """L1 + (1 - SSIM) to the area reference inside the ROI, normalised by ROI area.

    SSIM is taken with the background pasted from the reference, so that windows at the ROI
    border judge the object, not the (deliberately simplified) background next to it."""
    ssim = tensor_ssim_map(out * roi + ref * (1 - roi), ref)
    return masked_mean((out - ref).abs(), roi) + masked_mean(1 - ssim, roi)


def temporal_loss(out, ref, roi):
    """Flicker: how much more the output changes between frames than the reference does.

    Only the excess counts: following real motion is free, and so is holding a still background."""
    if out.shape[1] < 2:
        return out.new_zeros(())
    excess = F.relu((out[:, 1:] - out[:, :-1]).abs() - (ref[:, 1:] - ref[:, :-1]).abs())
    return masked_mean(excess, roi[:, 1:]) + masked_mean(excess, 1 - roi[:, 1:])


def rate_proxy(out, roi):
    """What an encoder pays for outside the ROI: spatial gradient energy and frame-to-frame change."""
    bg = 1 - roi
    dx = (out[..., :, 1:] - out[..., :, :-1]).abs()
    dy = (out[..., 1:, :] - out[..., :-1, :]).abs()
    spatial = masked_mean(dx, bg[..., :, 1:]) + masked_mean(dy, bg[..., 1:, :])
    if out.shape[1] < 2:
        return spatial
    return spatial + masked_mean((out[:, 1:] - out[:, :-1]).abs(), bg[:, 1:])


def boundary_loss(out, soft):
    """What a moving sharp/simplified boundary costs: output change where the soft mask changed.

    A jittery ROI (a detector that grows, shrinks or drops objects) makes x264 re-code every pixel
    the boundary sweeps over; this term lets the analyser learn to soften or simplify less then.
    Summed over the clip's frame pairs and channels, per pixel of the frame."""
    if out.shape[1] < 2:
        return out.new_zeros(())
    swept = (soft[:, 1:] - soft[:, :-1]).abs()
    change = (out[:, 1:] - out[:, :-1]).abs()
    return ((change * swept).sum((1, 2, 3, 4)) / swept[0, 0].numel()).mean()


def background_loss(out, ref, roi):
    """L1 to the reference outside the ROI: keeps the simplified background recognisable."""
    return masked_mean((out - ref).abs(), 1 - roi)


def perceptual_loss(encoders, frames, out, masks, max_frames: int = 2):
    """Each encoder's distance between the original frames and the output (see its ``distance``),
    averaged over encoders, on up to `max_frames` evenly spaced frames per clip to bound cost."""
    if not encoders:
        return out.new_zeros(())
    t = frames.shape[1]
    idx = torch.linspace(0, t - 1, min(max_frames, t)).round().long().tolist()
    orig, low, roi = frames[:, idx].flatten(0, 1), out[:, idx].flatten(0, 1), masks[:, idx].flatten(0, 1)
    return sum(enc.distance(orig, low, roi) for enc in encoders) / len(encoders)


@dataclass
class LossWeights:
    perceptual: float = 1.0
    roi: float = 5.0
    temporal: float = 2.0
    rate: float = 2.0
    background: float = 0.05
    boundary: float = 0.1


class CombinedLoss(nn.Module):
    """The training objective; returns (total, {component: value}) for logging."""

    def __init__(self, weights: LossWeights, scale_factor: int, encoders: Optional[list] = None):
        super().__init__()
        self.w, self.s = weights, scale_factor
        self.encoders = nn.ModuleList(encoders or [])

    def forward(self, output, frames, masks):
        ref = area_reference(frames, self.s)
        roi = tensor_roi_at_output(masks, self.s)
        parts = {
            "perceptual": (perceptual_loss(list(self.encoders), frames, output.frames, masks)
                           if self.w.perceptual else None),
            "roi": roi_loss(output.frames, ref, roi),
            "temporal": temporal_loss(output.frames, ref, roi),
            "rate": rate_proxy(output.frames, roi),
            "background": background_loss(output.frames, ref, roi),
            "boundary": boundary_loss(output.frames, output.masks),
        }
        parts = {k: v for k, v in parts.items() if v is not None}
        total = sum(getattr(self.w, k) * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
