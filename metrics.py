"""Quality, stability and rate metrics on uint8 video (T, H, W, 3), as the evaluation reports them.

Distortion is always measured against the area-downscaled reference, inside the ROI (and, for
reference, outside it), on what a decoder would actually show (8-bit frames).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from video_io import encode_h264_bytes

PSNR_CAP = 100.0  # identical signals: PSNR is infinite; we report this cap instead


def resize_all(frames, s: int, interp=cv2.INTER_AREA) -> list[np.ndarray]:
    """Every frame downscaled by s with one OpenCV interpolation (INTER_AREA: the reference)."""
    h, w = frames[0].shape[:2]
    return [cv2.resize(f, (w // s, h // s), interpolation=interp) for f in frames]


def block_max(mask: np.ndarray, s: int) -> np.ndarray:
    """(H,W) -> (H/s,W/s): an output pixel is ROI if any input pixel of its s x s cell is."""
    h, w = mask.shape[0] // s, mask.shape[1] // s
    return mask[:h * s, :w * s].reshape(h, s, w, s).max((1, 3))


def roi_at_output(masks, s: int) -> np.ndarray:
    """Binary ROI per output pixel, as (T,h,w,3) for the metrics."""
    roi = np.stack([block_max(m, s) for m in masks]) > 0
    return np.repeat(roi[..., None], 3, -1)


def rd_point(out, ref, roi, crf: int, fps: float, preset: str = "medium") -> tuple[dict, np.ndarray]:
    """Encode one output at one CRF: its H.264 bytes and ROI-PSNR after decoding, and the decoded frames."""
    size, decoded = encode_h264_bytes(out, fps, crf, preset)
    d = np.stack(decoded)
    return {"crf": crf, "bytes": size, "roi_psnr": masked_psnr(d, ref, roi)}, d


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10 * math.log10(peak * peak / mse))


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels where mask (T,H,W) is true, all frames pooled; nan if the mask is empty."""
    m = mask.astype(bool)
    if not m.any():
        return float("nan")
    diff = a.astype(np.float64)[m] - b.astype(np.float64)[m]
    return psnr_from_mse(float(np.mean(diff ** 2)))


def _luma(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (H,W) luma images in [0,255] (Gaussian window, sigma 1.5)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5)
    ma, mb = blur(a), blur(b)
    va, vb, cab = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean luma SSIM inside the mask over all frames; nan if the mask is empty."""
    m = mask.astype(bool)
    if not m.any():
        return float("nan")
    vals = [ssim_map(_luma(x), _luma(y))[mk] for x, y, mk in zip(a, b, m) if mk.any()]
    return float(np.mean(np.concatenate(vals)))


def flicker(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean |Δt output − Δt reference| (8-bit units) where the mask is true: change the reference
    does not have. 0 for a perfect copy of the reference's motion."""
    if len(out) < 2:
        return 0.0
    d_out = np.diff(out.astype(np.float64), axis=0)
    d_ref = np.diff(ref.astype(np.float64), axis=0)
    m = mask[1:].astype(bool)
    return float(np.abs(d_out - d_ref)[m].mean()) if m.any() else float("nan")


def warping_error(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean |out_t − warp(out_{t−1})| inside the mask, with the flow taken from the reference
    (Farneback), so it measures temporal inconsistency the real motion does not explain."""
    from roi_sources import backward_warp
    if len(out) < 2:
        return 0.0
    errs = []
    for t in range(1, len(out)):
        g0, g1 = (cv2.cvtColor(ref[i], cv2.COLOR_RGB2GRAY) for i in (t - 1, t))
        warped = backward_warp(out[t - 1], g1, g0)
        m = mask[t].astype(bool)
        if m.any():
            errs.append(np.abs(out[t].astype(np.float64) - warped)[m].mean())
    return float(np.mean(errs)) if errs else float("nan")


def bd_rate(anchor_rate, anchor_psnr, test_rate, test_psnr) -> float:
    """Bjøntegaard delta rate in percent (negative = fewer bytes at equal quality), computed by the
    maintained `bjontegaard` package with Akima interpolation (its authors' recommendation).
    nan when the two curves overlap too little in quality for a meaningful number."""
    import bjontegaard as bd
    try:
        return float(bd.bd_rate(list(anchor_rate), list(anchor_psnr), list(test_rate), list(test_psnr),
                                method="akima", require_matching_points=False))
    except ValueError:
        return float("nan")
