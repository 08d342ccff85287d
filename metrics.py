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
    """Every frame downscaled by s with one OpenCV interpolation (INTER_AREA: the reference,
    video_io.area_downscale)."""
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


def rd_point(out, ref, roi, crf: int, fps: float, preset: str = "veryfast") -> tuple[dict, np.ndarray]:
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


def psnr_overlap(a_psnr, b_psnr) -> float:
    """How many dB the quality ranges of two RD curves share (negative: a gap)."""
    return min(max(a_psnr), max(b_psnr)) - max(min(a_psnr), min(b_psnr))


def bd_rate(anchor_rate, anchor_psnr, test_rate, test_psnr, min_overlap_db: float = 1.0) -> float:
    """Bjøntegaard delta rate in percent (negative = fewer bytes at equal quality), computed by the
    maintained `bjontegaard` package with Akima interpolation (its authors' recommendation).
    nan when the two quality ranges share less than `min_overlap_db`: a number there would be an
    extrapolation, not a measurement (report_bd says "n/a (no overlap)" with the two ranges)."""
    import bjontegaard as bd
    finite = [np.all(np.isfinite(v)) for v in (anchor_rate, anchor_psnr, test_rate, test_psnr)]
    if not all(finite) or psnr_overlap(anchor_psnr, test_psnr) < min_overlap_db:
        return float("nan")
    import warnings
    # in order of rate: a method whose choice changes with the CRF (the closed loop) can spend more
    # bytes at CRF 23 than at 18, and the package refuses curves that are not monotonic in order
    (ar, ap), (tr, tp) = (zip(*sorted(zip(r, q))) for r, q in ((anchor_rate, anchor_psnr), (test_rate, test_psnr)))
    try:
        with warnings.catch_warnings():  # its own overlap warning: our rule above decides
            warnings.simplefilter("ignore")
            return float(bd.bd_rate(list(ar), list(ap), list(tr), list(tp), method="akima",
                                    require_matching_points=False))
    except (ValueError, AssertionError):  # the package asserts that quality rises with the rate
        return float("nan")


def report_bd(value: float, anchor_psnr, test_psnr) -> str:
    """A BD-rate as text: '-12.3%', or 'n/a (no overlap: 30.1-35.2 vs 36.0-41.3 dB)'."""
    if np.isfinite(value):
        return f"{value:+.1f}%"
    if psnr_overlap(anchor_psnr, test_psnr) >= 1.0:
        return "n/a (quality does not rise with the rate)"
    return (f"n/a (no overlap: {min(anchor_psnr):.1f}-{max(anchor_psnr):.1f} vs "
            f"{min(test_psnr):.1f}-{max(test_psnr):.1f} dB)")


def box_iou(a, b) -> float:
    """IoU of two boxes (x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_f1(reference: list, found: list, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of detections `found` against the
    detections on the original frame, each a list of (class, x1, y1, x2, y2[, confidence]):
    greedy matching by confidence, same class, IoU >= threshold."""
    order = sorted(range(len(found)), key=lambda i: -(found[i][5] if len(found[i]) > 5 else 1.0))
    unmatched = list(range(len(reference)))
    tp = 0
    for i in order:
        cls, box = found[i][0], found[i][1:5]
        best, best_iou = None, iou_threshold
        for j in unmatched:
            if reference[j][0] == cls:
                v = box_iou(box, reference[j][1:5])
                if v >= best_iou:
                    best, best_iou = j, v
        if best is not None:
            unmatched.remove(best)
            tp += 1
    return tp, len(found) - tp, len(unmatched)


def mask_iou(found, truth) -> float:
    """Intersection over union of two mask sequences, pooled over all frames (1.0 when both are empty)."""
    a, b = np.stack(found) > 0, np.stack(truth) > 0
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def f1_score(tp: int, fp: int, fn: int) -> float:
    """F1 of pooled counts; 1.0 when there was nothing to find and nothing was found."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def quality_at(size: float, rates, qualities) -> float:
    """A curve's quality at `size` bytes, interpolated in log bytes; nan outside its range."""
    pts = sorted(zip(rates, qualities))
    r = np.log([p[0] for p in pts])
    if not pts or not r[0] <= math.log(size) <= r[-1]:
        return float("nan")
    return float(np.interp(math.log(size), r, [p[1] for p in pts]))


def bytes_at(target: float, rates, qualities) -> float:
    """Bytes at which a curve (points in any order) first reaches `target` quality, linearly
    interpolated between the two points around it; nan when it never does or always does."""
    pts = sorted(zip(rates, qualities))
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if q0 < target <= q1:
            return r0 + (target - q0) / (q1 - q0) * (r1 - r0)
    return float("nan")


GHOST_BLOCK = 16   # output pixels: the size of a "region" in the ghost test
GHOST_LEVEL = 10   # uint8 levels of a block's mean colour: a smaller difference is coding or simplification


def longest_ghost(out: np.ndarray, ref: np.ndarray, fps: float) -> float:
    """Seconds of the longest run of consecutive frames in which one GHOST_BLOCK block's mean
    colour differs from the area frame's by more than GHOST_LEVEL: a person who left but is still
    shown, a car that parked but is not. Block means, so blurring or denoising a background is not
    a ghost; a held or frozen picture of something no longer there is."""
    T, h, w = out.shape[:3]
    hb, wb = h // GHOST_BLOCK, w // GHOST_BLOCK
    if not hb or not wb:
        return 0.0

    def means(x):
        x = x[:, :hb * GHOST_BLOCK, :wb * GHOST_BLOCK].astype(np.float32)
        return x.reshape(T, hb, GHOST_BLOCK, wb, GHOST_BLOCK, 3).mean((2, 4))
    off = (np.abs(means(out) - means(ref)).max(-1) > GHOST_LEVEL)
    run = np.zeros(off.shape[1:], np.int32)
    longest = 0
    for t in range(T):
        run = np.where(off[t], run + 1, 0)
        longest = max(longest, int(run.max()))
    return longest / fps


def moving_masks(frames, level: int = 25, blur: int = 9) -> list[np.ndarray]:
    """What moves in a static-camera clip without annotations: pixels whose colour differs from the
    clip's temporal median by more than ``level`` after removing each frame's global offset (the
    camera's exposure), cleaned by a 5x5 opening and grown by ``blur`` pixels. uint8 0/1 per frame."""
    stack = np.stack(frames).astype(np.int16)
    median = np.median(stack, axis=0)
    kernel_open, kernel_grow = np.ones((5, 5), np.uint8), np.ones((blur, blur), np.uint8)
    out = []
    for f in stack:
        d = (f - median).mean(-1)
        d = np.abs(d - np.median(d)) > level
        d = cv2.morphologyEx(d.astype(np.uint8), cv2.MORPH_OPEN, kernel_open)
        out.append(cv2.dilate(d, kernel_grow))
    return out
