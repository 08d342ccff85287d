"""Quality, stability and rate metrics on uint8 video (T, H, W, 3), as the evaluation reports them.

Distortion is always measured against the area-downscaled reference, inside the ROI (and, for
reference, outside it), on what a decoder would actually show (8-bit frames).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

PSNR_CAP = 100.0  # identical signals: PSNR is infinite; we report this cap instead


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
    if len(out) < 2:
        return 0.0
    errs = []
    h, w = out.shape[1:3]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    for t in range(1, len(out)):
        g0, g1 = (cv2.cvtColor(ref[i], cv2.COLOR_RGB2GRAY) for i in (t - 1, t))
        flow = cv2.calcOpticalFlowFarneback(g1, g0, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mp = grid + flow
        warped = cv2.remap(out[t - 1], mp[..., 0], mp[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
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
