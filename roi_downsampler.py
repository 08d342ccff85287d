"""The ROI-aware learned downsampler: one small, CPU-fast network in four parts.

    frames (B,T,3,H,W) in [0,1] + coarse ROI masks (B,T,1,H,W)
        |-- area downscale ("base")  -- the network starts as exactly this
        |-- SequenceAnalyzer        -> per-frame parameters (bounded, interpretable)
        |-- AdaptiveMaskHead        -> soft importance map at output resolution
        |-- TemporalConsistencyModule: carries state frame to frame (mask, params, held background)
        '-- blend: ROI path (base + learned detail) inside, simplified background outside
    -> downscaled clip (B,T,3,H/s,W/s), soft masks (B,T,1,H/s,W/s), parameters (B,T,P)

Everything after the area downscale runs at output resolution, which is what keeps a 720p frame
inside a ~25 ms CPU budget. Every step is causal, so running a clip frame by frame with the
carried state gives exactly the whole-clip result (see ``step``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (low, high, initial value). Initial values make the untrained model an area downscaler:
# no background simplification and no temporal hold, so it can never start worse than area.
PARAM_SPECS = {
    "bg_simplify":    (0.0, 1.0, 0.002),  # how far background moves toward its low-pass version
    "bg_coarseness":  (0.0, 1.0, 0.5),    # low-pass scale: 0 = 1/4 resolution, 1 = 1/16
    "bg_hold":        (0.0, 0.98, 0.002), # how strongly a static background is held from frame to frame
    "hold_threshold": (0.005, 0.1, 0.03), # change (0-1 intensity) above which the background is refreshed
    "roi_detail":     (0.0, 2.0, 1.0),    # gain of the learned ROI detail residual
    "mask_feather":   (0.0, 1.0, 0.5),    # mix toward a dilated+blurred mask (soft edges)
    "bg_gate":        (0.0, 1.0, 0.998),  # does simplifying pay on this clip? fitted against x264 (calibrate_gate.py)
}
PARAM_NAMES = list(PARAM_SPECS)
DEFAULT_BACKGROUND_QUALITY = 35.0  # dB: background PSNR floor against area downscaling (--background_quality)


@dataclass
class DownsamplerConfig:
    scale_factor: int = 2
    detail_channels: int = 12     # hidden width of the ROI detail path
    mask_channels: int = 8        # hidden width of the mask head
    analyser_channels: int = 16   # hidden width of the sequence analyser
    analyser_size: int = 32       # analyser looks at frames pooled to analyser_size^2
    param_momentum: float = 0.8   # EMA of analyser features over time (clip-level summary)
    gate_momentum: float = 0.99   # slower EMA for the background gate: a clip-level decision, not a per-frame one
    gate_lookahead: int = 8       # frames the gate looks at before the first output frame (see prime())


@dataclass
class DownsamplerState:
    """What the temporal module carries from one frame to the next (None before the first)."""
    prev_base: Optional[torch.Tensor] = None
    prev_mask: Optional[torch.Tensor] = None
    prev_background: Optional[torch.Tensor] = None
    feature_ema: Optional[torch.Tensor] = None
    stats_ema: Optional[torch.Tensor] = None  # slow average of the four clip statistics (the gate's input)
    frames_seen: int = 0
    prev_roi: Optional[torch.Tensor] = None  # input ROI at half output resolution


@dataclass
class DownsamplerOutput:
    frames: torch.Tensor                 # (B,T,3,h,w)
    masks: torch.Tensor                  # (B,T,1,h,w) soft importance
    params: torch.Tensor                 # (B,T,P) in PARAM_NAMES order, real units
    state: DownsamplerState = field(default_factory=DownsamplerState)
    gate_features: Optional[torch.Tensor] = None  # (B,T,4) what the background gate saw (calibration)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _by_opencv(x: torch.Tensor) -> bool:
    """Whether OpenCV may stand in for a torch op on x: a CPU float32 tensor that needs no gradient
    (inference). OpenCV's resize and dilation are 2-6x faster than the torch ops here, equal within
    float rounding (< 1e-5)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad


def _per_plane(x: torch.Tensor, fn) -> torch.Tensor:
    """fn(plane, dst=None) (an OpenCV call) applied to every (H, W) plane of a CPU float32 tensor (..., H, W)."""
    planes = x.reshape(-1, *x.shape[-2:]).contiguous().numpy()
    first = fn(planes[0])
    out = np.empty((len(planes), *first.shape), first.dtype)  # filled in place: no stacking copy
    out[0] = first
    for p, o in zip(planes[1:], out[1:]):
        fn(p, o)
    return torch.from_numpy(out).view(*x.shape[:-2], *out.shape[-2:])


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with half-pixel centres (align_corners=False; OpenCV's INTER_LINEAR is the same)."""
    if _by_opencv(x):
        return _per_plane(x, lambda p, o=None: cv2.resize(p, (size[1], size[0]), o, interpolation=cv2.INTER_LINEAR))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def repeat_pixels(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each pixel of (B,C,h,w) as a k x k block: nearest-neighbour upscaling by k (F.interpolate's
    "nearest" at an integer factor, without its index arithmetic)."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, k, w, k).reshape(b, c, h * k, w * k)


def coarse_background(base: torch.Tensor, coarseness: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Wide blur of the background: 1/4, 1/8 and 1/16 versions of `base` mixed by `coarseness`
    with Bernstein weights ((1-c)^2, 2c(1-c), c^2: 0 -> 1/4, 1 -> 1/16; smooth, so the
    gradient never vanishes), upsampled once.

    It is a normalised convolution with `weight` (1 = background): objects are left out of the
    average, so they do not smear into the background and drag bits along as they move. Where a
    whole cell is object, the plain average is used.
    """
    eps = 1e-3
    pyramid = [torch.cat([area_pool(base * weight, 4), area_pool(weight, 4), area_pool(base, 4)], 1)]
    for _ in range(2):
        pyramid.append(area_pool(pyramid[-1], 2))
    size = pyramid[0].shape[-2:]
    quarter, eighth, sixteenth = pyramid[0], upsample(pyramid[1], size), upsample(pyramid[2], size)
    c = coarseness.view(-1, 1, 1, 1)
    mixed = (1 - c) ** 2 * quarter + 2 * c * (1 - c) * eighth + c ** 2 * sixteenth
    num, den, plain = mixed[:, :3], mixed[:, 3:4], mixed[:, 4:]
    return upsample((num + eps * plain) / (den + eps), base.shape[-2:])


def _cells(x: torch.Tensor, s: int):
    """The s*s strided views x[..., i::s, j::s] of a tensor whose size is a multiple of s."""
    return [x[..., i::s, j::s] for i in range(s) for j in range(s)]


def area_pool(x: torch.Tensor, s: int) -> torch.Tensor:
    """Mean over s x s blocks (= avg_pool2d(x, s, ceil_mode=True): a partial block at the
    bottom/right edge is the mean of what it holds). When the size is a multiple of s it is OpenCV's
    INTER_AREA at inference, else (training) a sum of strided views: both several times faster than
    avg_pool2d on CPU."""
    h, w = x.shape[-2:]
    if h % s or w % s:
        return F.avg_pool2d(x, s, ceil_mode=True)
    if _by_opencv(x):  # INTER_AREA at an integer factor is exactly the block mean
        return _per_plane(x, lambda p, o=None: cv2.resize(p, (w // s, h // s), o, interpolation=cv2.INTER_AREA))
    if s % 2 == 0 and s > 2:  # 4 = 2 x 2: 6 additions instead of 15
        return area_pool(area_pool(x, 2), s // 2)
    cells = _cells(x, s)
    total = cells[0] + cells[1]
    for c in cells[2:]:
        total = total + c
    return total / (s * s)


def area_pool_uint8(x: torch.Tensor, s: int) -> torch.Tensor:
    """area_pool of uint8 images (..., C, H, W) with H, W multiples of s, scaled to [0, 1]. On the
    CPU by OpenCV: INTER_AREA over the values times s*s gives the exact s x s block sums, so the
    full-resolution frame is never converted to float (~4x faster than converting and pooling)."""
    if x.device.type != "cpu":
        return area_pool(x.float().div_(255), s)
    h, w = x.shape[-2] // s, x.shape[-1] // s
    hwc = x.movedim(-3, -1).numpy()
    frames = hwc.reshape(-1, *hwc.shape[-3:])
    out = torch.empty(len(frames), hwc.shape[-1], h, w)
    for f, o in zip(frames, out):
        sums = cv2.resize(np.multiply(f, s * s, dtype=np.uint16), (w, h), interpolation=cv2.INTER_AREA)
        # converted straight into contiguous (C, h, w): everything downstream works on that layout
        # (in the (h, w, C) strides of the frame the network took ~35 % longer)
        o.copy_(torch.from_numpy(sums.reshape(h, w, -1)).permute(2, 0, 1))
    return out.view(*hwc.shape[:-3], hwc.shape[-1], h, w).div_(255 * s * s)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """An image as float in [0, 1] (uint8 is scaled; float is returned as it is)."""
    return x if x.is_floating_point() else x.float().div_(255)


def max_pool(x: torch.Tensor, s: int) -> torch.Tensor:
    """Max over s x s blocks (= max_pool2d(x, s, ceil_mode=True)) as a max of strided views, rows
    first (whole rows: contiguous, vectorised; then half the data for the columns): several times
    faster than max_pool2d on CPU, which also computes indices."""
    h, w = x.shape[-2:]
    ph, pw = -h % s, -w % s
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=float("-inf"))
    rows = x[..., 0::s, :]
    for i in range(1, s):
        rows = torch.maximum(rows, x[..., i::s, :])
    out = rows[..., 0::s]
    for j in range(1, s):
        out = torch.maximum(out, rows[..., j::s])
    return out


def _along_window(x: torch.Tensor, k: int, dim: int, combine, outside: float) -> torch.Tensor:
    """combine(...) of the k values in a centred window along dim, left to right, the outside
    padded with `outside`: a 1-D filter as k shifted views of the whole tensor."""
    r, n = k // 2, x.shape[dim]
    padded = F.pad(x, (r, r) if dim == -1 else (0, 0, r, r), value=outside)
    out = padded.narrow(dim, 0, n)
    for i in range(1, k):
        out = combine(out, padded.narrow(dim, i, n))
    return out


def _running_max(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Max over a centred window of k along dim, borders padded with -inf (a 1-D max filter)."""
    return _along_window(x, k, dim, torch.maximum, float("-inf"))


def dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k max filter (= max_pool2d(x, k, stride=1, padding=k//2)): OpenCV's for CPU float maps that
    need no gradient (inference), else separable running maxima (~10x faster than max_pool2d)."""
    if _by_opencv(x):
        kernel = np.ones((k, k), np.uint8)  # OpenCV's default border leaves the outside out, as -inf padding does
        return _per_plane(x, lambda p, o=None: cv2.dilate(p, kernel, o))
    return _running_max(_running_max(x, k, -1), k, -2)


def erode(x: torch.Tensor, k: int) -> torch.Tensor:
    """Erosion of a [0, 1] map with the outside counted as 0, so a closing does not fill the gap
    between an object and the frame border."""
    r = k // 2
    return 1 - dilate(F.pad(1 - x, (r, r, r, r), value=1.0), k)[..., r:-r, r:-r]


def _window_mean(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Mean over a centred window of k along dim, clipped at the borders: avg_pool2d's
    (count_include_pad=False) very floats -- the same additions in the same order, zeros for the
    outside -- ~5x faster on CPU."""
    r, n = k // 2, x.shape[dim]
    total = _along_window(x, k, dim, torch.add, 0.0)
    j = torch.arange(n, device=x.device)
    count = ((j + r).clamp(max=n - 1) - (j - r).clamp(min=0) + 1).to(x.dtype)
    return total / (count if dim == -1 else count[:, None])


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k mean, windows clipped at the border; separable (a clipped box is a product of 1-D boxes)."""
    return _window_mean(_window_mean(x, k, -1), k, -2)


def _blocks(pixels: np.ndarray, s: int) -> np.ndarray:
    """(B, H, W, C) images -> (B*h*w, s*s*C): their s x s blocks, each in (row, column, channel)
    order. A block's row is s*C values in a row of the image: each is copied as one unit (1.5x
    faster than value by value)."""
    b, H, W, c = pixels.shape
    h, w = H // s, W // s
    rows = pixels.reshape(b, H, W * c)  # a copy only where a row's values are not contiguous
    units = rows.view(np.dtype((np.void, s * c * pixels.itemsize)))  # (B, H, w)
    blocks = np.ascontiguousarray(units.reshape(b, h, s, w).transpose(0, 1, 3, 2))  # (B, h, w, s)
    return blocks.view(pixels.dtype).reshape(-1, s * s * c)


class SequenceAnalyzer(nn.Module):
    """Summarises the clip so far and predicts the downsampling parameters.

    Each frame is pooled to a tiny image (colour, ROI mask, change since the last frame), encoded
    by two strided convs and averaged over space; an exponential moving average over time (kept
    in the temporal state) makes it a causal clip summary. A small MLP maps the summary plus four
    global statistics (ROI area, motion, texture, and how much the input ROI jumps from frame to
    frame -- a jittery detector makes a hard sharp/blurred boundary expensive) to bounded
    parameters via sigmoids.

    The last parameter, ``bg_gate``, is a logistic function of the log clip statistics that
    scales background simplification and hold. Gradient training leaves it alone (the rate proxy
    cannot tell when x264 pays more for a jittery sharp/blurred boundary than it saves on the
    background); calibrate_gate.py fits it to x264's own verdict on calibration clips.
    """

    def __init__(self, cfg: DownsamplerConfig):
        super().__init__()
        c = cfg.analyser_channels
        self.size = cfg.analyser_size
        self.momentum = cfg.param_momentum
        self.gate_momentum = cfg.gate_momentum
        self.encoder = nn.Sequential(
            nn.Conv2d(5, c, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.feature_dim = c + 4
        self.head = nn.Sequential(nn.Linear(self.feature_dim, 32), nn.ReLU(inplace=True),
                                  nn.Linear(32, len(PARAM_SPECS) - 1))
        nn.init.zeros_(self.head[2].weight)  # start at the initial values below, exactly
        self.gate = nn.Linear(4, 1).requires_grad_(False)  # fitted by calibrate_gate.py, not by gradient
        nn.init.zeros_(self.gate.weight)
        with torch.no_grad():
            logits = [_logit((init - lo) / (hi - lo)) for lo, hi, init in PARAM_SPECS.values()]
            self.head[2].bias.copy_(torch.tensor(logits[:-1]))
            self.gate.bias.fill_(logits[-1])
        # from PARAM_SPECS, not from the checkpoint (persistent=False): ranges are the code's business
        self.register_buffer("low", torch.tensor([s[0] for s in PARAM_SPECS.values()]), persistent=False)
        self.register_buffer("high", torch.tensor([s[1] for s in PARAM_SPECS.values()]), persistent=False)

    def frame_features(self, image, mask, change, mask_jump):
        x = F.adaptive_avg_pool2d(torch.cat([image, mask, change], 1), self.size)
        feats = self.encoder(x).mean((2, 3))
        texture = (x[:, :3, :, 1:] - x[:, :3, :, :-1]).abs().mean((1, 2, 3))
        stats = torch.stack([x[:, 3].mean((1, 2)), x[:, 4].mean((1, 2)), texture, mask_jump], 1)
        return torch.cat([feats, stats], 1)

    @staticmethod
    def mask_jump(mask, prev_mask):
        """How much of the ROI changed since the previous frame's (0 at the first)."""
        return mask.new_zeros(mask.shape[0]) if prev_mask is None else (mask - prev_mask).abs().mean((1, 2, 3))

    def forward(self, image, mask, change, state: DownsamplerState, features=None):
        """image, mask, change: (B,·,h,w) at half output resolution. features: this frame's
        frame_features when they were made ahead (ROIDownsampler.ahead)."""
        f = features if features is not None else \
            self.frame_features(image, mask, change, self.mask_jump(mask, state.prev_roi))
        ema = f if state.feature_ema is None else self.momentum * state.feature_ema + (1 - self.momentum) * f
        seen = f[:, -4:]
        if state.prev_roi is None:  # how much the ROI jumps is unknown yet: assume the worst (all of it)
            seen = torch.cat([seen[:, :3], seen[:, :1]], 1)
        # running mean over the first frames, then a slow EMA: the gate decides once, early, per clip
        m = min(self.gate_momentum, state.frames_seen / (state.frames_seen + 1))
        stats = seen if state.stats_ema is None else m * state.stats_ema + (1 - m) * seen
        u = torch.cat([torch.sigmoid(self.head(ema)), torch.sigmoid(self.gate(self.gate_features(stats)))], 1)
        return self.low + (self.high - self.low) * u, ema, stats

    @staticmethod
    def gate_features(stats):
        """The gate's input: log of the slowly averaged clip statistics (ROI area, motion, texture,
        ROI jump). Switching the background style back and forth would itself cost bits."""
        return torch.log(stats.clamp_min(0) + 1e-3)


class AdaptiveMaskHead(nn.Module):
    """Turns a coarse (YOLO) mask into a soft importance map at output resolution.

    Core: the ROI max-pooled to output size (small objects survive, unlike area averaging), with
    holes up to ~8 output pixels closed at half resolution (a detector's ragged hair line or a
    motion mask's gaps would otherwise become blurred patches inside the object); it is never
    shrunk, so every object pixel stays on the sharp path. Halo: a tiny conv on (mask, image)
    at half resolution (4x cheaper) shapes a dilated, blurred border whose strength is the
    predicted ``mask_feather`` -- soft transitions when they pay, a tight mask when bits matter
    more (every pixel of margin costs bits in every frame). The halo is confined to ~16 output
    pixels around the objects: trained on a detector that misses parts of objects, an unconfined
    halo learned to cover the whole frame, which protects everything and simplifies nothing.
    """

    def __init__(self, cfg: DownsamplerConfig):
        super().__init__()
        c = cfg.mask_channels
        self.refine = nn.Sequential(nn.Conv2d(4, c, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.refine[2].weight)
        nn.init.zeros_(self.refine[2].bias)

    def forward(self, feather, shaped):
        """The soft map: core and halo (``shape``) with the halo at the predicted strength."""
        core, halo = shaped
        return torch.maximum(core, feather.view(-1, 1, 1, 1) * halo)

    def shape(self, roi, image_half, roi_half):
        """(core, halo at full strength), both at output resolution: all of the head that needs
        no state (prepare() makes it ahead). roi: (B,1,h,w) ROI at output resolution; image_half:
        the output image at half size; roi_half: max_pool(roi, 2)."""
        closed = erode(dilate(roi_half, 5), 5)
        size = roi.shape[-2:]
        holes = repeat_pixels(closed - roi_half, 2)[..., : size[0], : size[1]]
        core = torch.maximum(roi, holes)  # only holes are added: the outline does not grow
        features = torch.cat([closed, image_half], 1).contiguous(memory_format=torch.channels_last)
        logits = 6.0 * (2.0 * closed - 1.0) + self.refine(features).contiguous()  # channels_last: ~10 % faster
        near = dilate(closed, 9)  # the halo is a border: at most ~16 output pixels from an object
        halo = box_blur(dilate(torch.sigmoid(logits) * near, 5), 5)
        return core, upsample(halo, size)


class TemporalConsistencyModule(nn.Module):
    """Carries mask and background from frame to frame so neither flickers.

    Mask: the new mask is never reduced (objects stay covered), but where an object has just
    left, the previous mask fades out through a learned per-pixel gate instead of vanishing, so
    a detector that drops an object for a frame does not make the boundary jump. Background:
    where the picture changed by less than ``hold_threshold``, the previous output background is
    held (up to ``bg_hold``), so sensor noise and shimmer disappear and the encoder can skip
    those blocks.
    """

    def __init__(self, cfg: DownsamplerConfig):
        super().__init__()
        self.gate = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.weight[0, 2, 1, 1] = -40.0  # change -> forget the old mask
            self.gate.bias.fill_(-2.0)            # static: the old mask fades by ~0.12 per frame

    @staticmethod
    def change_map(now, before):
        """Mean absolute colour change at half resolution (2x2 averaged, so lone noisy pixels count less)."""
        return area_pool((now - before).abs().mean(1, keepdim=True), 2)

    @staticmethod
    def moved_map(change, size):
        """Where the input itself changed, with its 3x3 neighbourhood, at output resolution (size):
        what hold_background refreshes whatever the held value."""
        return upsample(dilate(change, 3), size)

    def smooth_mask(self, mask, prev_mask, change):
        """mask, prev_mask at output resolution; change at half resolution (the gate runs there)."""
        if prev_mask is None:
            return mask
        g = torch.sigmoid(self.gate(torch.cat([area_pool(mask, 2), area_pool(prev_mask, 2), change], 1)))
        return torch.maximum(mask, upsample(g, mask.shape[-2:]) * prev_mask)

    def hold_background(self, background, prev_background, hold, threshold, moved=None, roi=None):
        """Hold the previous background where it is still right. A pixel is refreshed at once
        (with its 3x3 neighbourhood) where the held value is more than ``threshold`` off the new one,
        where the input itself changed by that much (``moved``: moved_map), or within ~16
        output pixels of where an object is or just was (``roi``: soft masks of this and the previous
        frame; the coarse background there shifts as the object moves): an object that leaves is
        never kept as a fading ghost, whatever its contrast."""
        if prev_background is None:
            return background
        thr = threshold.view(-1, 1, 1, 1)
        step = background - prev_background
        diff = step.abs().mean(1, keepdim=True)
        size = background.shape[-2:]
        stale = dilate(diff, 3) > thr
        if moved is not None:
            stale = stale | (moved > thr)
        if roi is not None:  # near an object the coarse background shifts as it moves: never held there
            near = dilate(max_pool(roi, 4), 9) > 0.05  # ~16 output pixels around it, at quarter resolution
            stale = stale | repeat_pixels(near, 4)[..., : size[0], : size[1]]
        h = hold.view(-1, 1, 1, 1) * torch.exp(-diff / thr) * (~stale)
        return background - h * step  # = background + h * (prev_background - background), exactly


class ROIDownsampler(nn.Module):
    """Area downscale + learned ROI detail + simplified, temporally held background."""

    def __init__(self, cfg: Optional[DownsamplerConfig] = None):
        super().__init__()
        self.cfg = cfg or DownsamplerConfig()
        s = self.cfg.scale_factor
        if s not in (2, 3, 4, 8):
            raise ValueError(f"scale factor {s} is not supported; use 2 or 4 (3 and 8 also work)")
        c = self.cfg.detail_channels
        self.analyzer = SequenceAnalyzer(self.cfg)
        self.mask_head = AdaptiveMaskHead(self.cfg)
        self.temporal = TemporalConsistencyModule(self.cfg)
        # ROI detail: an s x s strided conv sees every input pixel of an output pixel (a learned,
        # non-linear polyphase filter), then a 1x1 mix; zero-initialised so training starts from area.
        self.detail = nn.Sequential(nn.Conv2d(3, c, s, stride=s), nn.ReLU(inplace=True),
                                    nn.Conv2d(c, 3, 1))
        nn.init.zeros_(self.detail[2].weight)
        nn.init.zeros_(self.detail[2].bias)
        self.set_background_strength(1.0)
        self.set_background_floor(0.0)
        self.follow_gate = True  # False: the background is simplified whatever the gate says (the
        #                          closed loop in rd_control.py decides instead, by trial encodes)

    @property
    def scale_factor(self) -> int:
        return self.cfg.scale_factor

    def set_background_strength(self, strength: float) -> None:
        """Scale the predicted background simplification and hold (1 = as trained, 0 = the
        background is plain area downscaling). Not saved in checkpoints: an inference-time knob."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"background strength must be in [0, 1], got {strength}")
        self.background_strength = float(strength)

    def set_background_floor(self, psnr_db: float) -> None:
        """Keep the background recognisable: in every 8x8 block of the output, the background
        is pulled toward the area downscale until its PSNR against it is at least `psnr_db`
        (0 = no floor). Per block, not per frame: an object the detector missed is background to
        the network, and a frame-wide floor lets a small missed object be erased while the flat
        rest of the frame keeps the average up. Not saved in checkpoints: an inference-time knob
        (--background_quality), also applied in training."""
        if not (psnr_db == 0 or 10.0 <= psnr_db <= 100.0):
            raise ValueError(f"background floor must be 0 (off) or 10..100 dB, got {psnr_db}")
        self.background_floor = float(psnr_db)

    def apply_floor(self, background, base, weight, block: int = 8):
        """background moved toward base, block by block (8x8 at output resolution), just enough
        that its PSNR against base over `weight` (1 = background pixel) reaches the floor: the
        error scales with the square of the step."""
        if not self.background_floor:
            return background
        sq = weight * (background - base).square().mean(1, keepdim=True)
        err = area_pool(sq, block) / area_pool(weight, block).clamp_min(1e-6)
        limit = 10 ** (-self.background_floor / 10)
        alpha = (limit / err.clamp_min(1e-12)).sqrt().clamp(max=1.0)
        if not torch.is_grad_enabled() and bool((alpha == 1.0).all()):  # no block is below the floor
            return background
        size = background.shape[-2:]
        alpha = repeat_pixels(alpha, block)[..., : size[0], : size[1]]
        return base + alpha * (background - base)

    def effective(self, params):
        """bg_simplify and bg_hold scaled by the gate (unless ``follow_gate`` is off) and
        --background_strength (reported so)."""
        gate = params[:, PARAM_NAMES.index("bg_gate")]
        k = self.background_strength * (gate if self.follow_gate else torch.ones_like(gate))
        scale = torch.stack([k if n in ("bg_simplify", "bg_hold") else torch.ones_like(k) for n in PARAM_NAMES], 1)
        return params * scale

    def step(self, frame, mask, state: Optional[DownsamplerState] = None, prepared: Optional[tuple] = None):
        """One frame (B,3,H,W), uint8 or float in [0, 1], + mask (B,1,H,W) -> (output, soft mask,
        params, new state). ``prepared``: ``prepare(frame, mask)`` when it was made ahead.

        Sizes that are not multiples of s are cropped bottom/right (output floor(H/s) x floor(W/s)).
        """
        state = state or DownsamplerState()
        frame, base, half, roi_half, shaped, *ahead = prepared or self.prepare(frame, mask)
        if ahead and ahead[0] is state.prev_base:  # made ahead from the same previous frame
            change, moved, features = ahead[1:]
        else:
            change, features = self.change(base, state), None
            moved = None if state.prev_base is None else self.temporal.moved_map(change, base.shape[-2:])
        params, ema, stats = self.analyzer(half, roi_half, change, state, features)
        params = self.effective(params)
        p = dict(zip(PARAM_NAMES, params.unbind(1)))

        soft = self.mask_head(p["mask_feather"], shaped)
        soft = self.temporal.smooth_mask(soft, state.prev_mask, change)

        sharp = self.sharpen(frame, base, soft, p["roi_detail"].view(-1, 1, 1, 1))
        simple = coarse_background(base, p["bg_coarseness"], 1 - soft)
        background = base + p["bg_simplify"].view(-1, 1, 1, 1) * (simple - base)
        was_roi = soft if state.prev_mask is None else torch.maximum(soft, state.prev_mask)
        background = self.temporal.hold_background(background, state.prev_background, p["bg_hold"], p["hold_threshold"],
                                                   moved, was_roi)
        background = self.apply_floor(background, base, 1 - soft)

        out = (background + soft * (sharp - background)).clamp(0, 1)
        new_state = DownsamplerState(prev_base=base, prev_mask=soft, prev_background=background, feature_ema=ema,
                                     stats_ema=stats, prev_roi=roi_half, frames_seen=state.frames_seen + 1)
        return out, soft, params, new_state

    def sharpen(self, frame, base, soft, gain):
        """The ROI path: base + gain * learned detail. The detail conv is s x s with stride s, so
        each output pixel depends on its own input block only; inference computes it just over
        the rows and columns the soft mask reaches (the rest is never shown), and not at all when
        the gain would add nothing."""
        if torch.is_grad_enabled():  # channels_last makes these small-channel convs ~4x faster on CPU (oneDNN)
            return base + gain * self.detail(as_float(frame).contiguous(memory_format=torch.channels_last)).contiguous()
        if gain.max() <= 1e-6:
            return base
        reach = soft.amax((0, 1))  # (h, w) over the batch
        rows, cols = torch.nonzero(reach.amax(1) > 0), torch.nonzero(reach.amax(0) > 0)
        if len(rows) == 0:
            return base
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        s = self.cfg.scale_factor
        sharp = base.clone()
        sharp[..., r0:r1, c0:c1] += self.detail_as_matmul(frame[..., r0 * s:r1 * s, c0 * s:c1 * s], gain)
        return sharp

    def detail_as_matmul(self, x, gain):
        """gain * self.detail(x) for a (B,3,H,W) crop, uint8 or float, as two matrix products over
        its s x s blocks. The crop's size changes from frame to frame, and oneDNN caches a
        convolution per input size (memory grew ~0.5 MB a frame with the conv). The blocks are
        gathered from the pixels as decoded ((H, W, 3) rows, uint8: a quarter of the bytes) and the
        weights permuted to their (row, column, colour) order; 1/255 and the gain are folded into
        the weights."""
        s, (conv, mix) = self.cfg.scale_factor, (self.detail[0], self.detail[2])
        b, _, h, w = x.shape[0], x.shape[1], x.shape[2] // s, x.shape[3] // s
        pixels = x.movedim(1, -1)  # (B, H, W, 3): as decoded, the rows of the frame
        if x.device.type == "cpu":  # numpy: its copies are ~2x faster than torch's here
            blocks = torch.from_numpy(_blocks(pixels.numpy(), s).astype(np.float32, copy=False))
        else:
            blocks = pixels.reshape(b, h, s, w, s, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s * 3).float()
        w1 = conv.weight.permute(0, 2, 3, 1).flatten(1).t() * (1.0 if x.is_floating_point() else 1 / 255)
        hidden = torch.relu_(torch.addmm(conv.bias, blocks, w1))  # (B*h*w, c)
        g = gain.reshape(b, 1, 1)
        out = torch.baddbmm(g * mix.bias.view(1, 3, 1), g * mix.weight.flatten(1), hidden.view(b, h * w, -1).transpose(1, 2))
        return out.view(b, 3, h, w)

    def pooled(self, frame, mask) -> tuple:
        """The frame and mask cropped to a multiple of s (bottom/right), the area downscale and its
        half, the ROI at output and half resolution."""
        s = self.cfg.scale_factor
        H, W = frame.shape[-2:]
        frame, mask = frame[..., : H - H % s, : W - W % s], mask[..., : H - H % s, : W - W % s]
        base = area_pool(frame, s) if frame.is_floating_point() else area_pool_uint8(frame, s)  # the area downscale
        half = area_pool(base, 2)                       # analysis / mask-halo resolution
        roi = max_pool(mask, s)                        # max, not mean: small objects survive
        return frame, base, half, roi, max_pool(roi, 2)

    def prepare(self, frame, mask) -> tuple:
        """All that step() does with one frame and its mask that needs no state: ``pooled`` and
        the mask head's core and halo -- a third of the work. Streaming makes it ahead, on the
        input thread (engine.prepared)."""
        frame, base, half, roi, roi_half = self.pooled(frame, mask)
        return frame, base, half, roi_half, self.mask_head.shape(roi, half, roi_half)

    def change(self, base, state: DownsamplerState):
        """The change since the previous frame, at half resolution (none at the first)."""
        if state.prev_base is None:
            return torch.zeros_like(base[:, :1, ::2, ::2])
        return self.temporal.change_map(base, state.prev_base)

    def ahead(self, ready: tuple, before: Optional[tuple]) -> tuple:
        """``ready`` (a frame's prepare()) extended with what step() makes from it and the frame
        before it (``before``, that frame's ahead(); None at the first): the previous area downscale,
        the change since it, where the input moved (moved_map) and the analyser's frame features.
        Streaming makes them on the input thread (engine.prepared); step() takes them when its state's
        previous frame is ``before``, else makes them itself."""
        _, base, half, roi_half, _ = ready[:5]
        prev_base, prev_roi = (before[1], before[3]) if before is not None else (None, None)
        change = self.change(base, DownsamplerState(prev_base=prev_base))
        moved = None if prev_base is None else self.temporal.moved_map(change, base.shape[-2:])
        features = self.analyzer.frame_features(half, roi_half, change, self.analyzer.mask_jump(roi_half, prev_roi))
        return (*ready[:5], prev_base, change, moved, features)

    @torch.no_grad()
    def prime(self, frames, masks) -> DownsamplerState:
        """A start state whose gate statistics already summarise the first frames (B,T,...).

        The background gate decides once per clip; deciding at frame 0 from one frame is a guess,
        and a wrong guess on the intra frame costs a second near-intra update when it flips a few
        frames later. Inference and evaluation prime on the first ``gate_lookahead`` frames (a
        latency of that many frames); everything else starts fresh."""
        state = DownsamplerState()
        for t in range(min(frames.shape[1], self.cfg.gate_lookahead)):  # the analyser's part of step() only
            _, base, half, _, roi_half = self.pooled(frames[:, t], masks[:, t])
            _, ema, stats = self.analyzer(half, roi_half, self.change(base, state), state)
            state = DownsamplerState(prev_base=base, feature_ema=ema, stats_ema=stats, prev_roi=roi_half,
                                     frames_seen=state.frames_seen + 1)
        return DownsamplerState(stats_ema=state.stats_ema, frames_seen=state.frames_seen)

    def forward(self, frames, masks, state: Optional[DownsamplerState] = None) -> DownsamplerOutput:
        if frames.dim() != 5 or masks.dim() != 5:
            raise ValueError("expected frames (B,T,3,H,W) and masks (B,T,1,H,W)")
        outs, softs, params, gate = [], [], [], []
        for t in range(frames.shape[1]):
            o, m, p, state = self.step(frames[:, t], masks[:, t], state)
            outs.append(o), softs.append(m), params.append(p), gate.append(self.analyzer.gate_features(state.stats_ema))
        return DownsamplerOutput(torch.stack(outs, 1), torch.stack(softs, 1), torch.stack(params, 1), state,
                                 torch.stack(gate, 1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
