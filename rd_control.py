"""Decide with the encoder: per segment, trial-encode the candidate outputs with x264 and keep the
one with the lowest rate-distortion cost.

A candidate is a background (the network's simplified one, or plain area downscaling) and an
x264 ROI quantiser offset on the objects' macroblocks. For each segment (default 50 frames, 2 s
at 25 fps) the first ``trial_frames`` of every candidate are encoded with the same x264 settings
as the real stream, decoded, and scored

    J = SSE inside the ROI (against area downscaling) + lambda * bits

and lambda is measured, not assumed: the slope of plain area downscaling's own curve (ROI SSE
against bits) between this CRF and CRF+3, from one extra trial. A candidate is chosen only if it
lies below the line area itself moves along when the CRF changes -- the same question the
BD-rate against area asks -- so the loop never picks something worse than area in its own trials.
(x264's Lagrangian, 0.85 * 2^((CRF-12)/3), prices every bit at the ROI's rate and favours moving
bits to the ROI even where that loses against simply lowering the CRF; it is the fallback when the
measured slope is not usable.) Both backgrounds already
meet the background floor (the network applies it), so the floor never needs a trial. The look-
ahead is one segment; ``budget_seconds`` bounds the trial time per segment (the candidates are
tried in order of their prior and the trials stop when the budget is spent, after area and the
network's background have been tried).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from errors import UserError
from video_io import encode_h264_bytes, roi_rectangles

QOFFSETS = (0.0, -0.2)
BACKGROUNDS = ("model", "area")


@dataclass
class Candidate:
    background: str   # "model" or "area"
    qoffset: float

    @property
    def name(self) -> str:
        return f"{self.background}{'' if not self.qoffset else f'+roi_qp{self.qoffset:+.1f}'}"


@dataclass
class Decision:
    """The choice for one segment and what every candidate cost."""
    start: int
    frames: int
    choice: Candidate
    costs: dict = field(default_factory=dict)   # candidate name -> {"bits", "roi_sse", "cost"}
    seconds: float = 0.0
    lam: float = 0.0                            # ROI SSE per bit used for the costs


def parse_qoffset(text: str):
    """--roi_qoffset: None for auto (the closed loop chooses), else a number in -1..1."""
    if text == "auto":
        return None
    try:
        q = float(text)
    except ValueError:
        raise UserError(f"--roi_qoffset {text}: give auto or a number in -1..1 (e.g. -0.2)") from None
    if not -1 <= q <= 1:
        raise UserError(f"--roi_qoffset must be in -1..1, got {q}")
    return q


def lagrangian(crf: int) -> float:
    """SSE per bit at this quantiser, as x264 trades distortion against rate."""
    return 0.85 * 2 ** ((crf - 12) / 3)


def candidates(qoffsets=QOFFSETS, backgrounds=BACKGROUNDS, fixed_qoffset=None) -> list[Candidate]:
    """Model background first (the prior), then area; a fixed --roi_qoffset leaves only that offset."""
    qs = (fixed_qoffset,) if fixed_qoffset is not None else qoffsets
    return [Candidate(b, q) for b in backgrounds for q in qs]


def roi_of(softs) -> list[np.ndarray]:
    """The ROI the encoder and the cost see: soft importance >= 0.5."""
    return [s >= 128 for s in softs]


@dataclass
class AreaLine:
    """What plain area downscaling costs on a trial window, and the ROI SSE it trades per bit when
    the CRF changes (the slope a candidate must beat)."""
    bits: float
    roi_sse: float
    lam: float

    def cost(self, bits: float, roi_sse: float) -> float:
        return roi_sse + self.lam * bits


def trial(frames, area_frames, roi, crf: int, fps: float, preset: str, qoffset: float = 0.0):
    """(bits, ROI SSE against area downscaling) of frames encoded and decoded with x264; roi: (T,h,w,1) bool."""
    rects = [roi_rectangles(r[..., 0]) for r in roi] if qoffset else None
    size, decoded = encode_h264_bytes(frames, fps, crf, preset, rois=rects, qoffset=qoffset)
    ref = np.stack(area_frames).astype(np.float64)
    return 8 * size, float((((np.stack(decoded) - ref) ** 2) * roi).sum() / 3)


def area_line(area_frames, roi, crf: int, fps: float, preset: str) -> AreaLine:
    """Area downscaling at this CRF and at CRF+3: its cost and its measured lambda."""
    anchor = trial(area_frames, area_frames, roi, crf, fps, preset)
    probe = trial(area_frames, area_frames, roi, min(51, crf + 3), fps, preset)
    slope = (probe[1] - anchor[1]) / (anchor[0] - probe[0]) if anchor[0] > probe[0] else 0.0
    return AreaLine(anchor[0], anchor[1], slope if slope > 0 else lagrangian(crf))


def decide(model_frames, area_frames, softs, crf: int, fps: float, preset: str, start: int = 0,
           trial_frames: int = 12, options=None, budget_seconds: float = float("inf")) -> Decision:
    """Trial-encode the start of one segment for every candidate; return the cheapest."""
    t0 = time.perf_counter()
    options = options or candidates()
    n = min(trial_frames, len(model_frames))
    roi = np.stack(roi_of(softs[:n]))[..., None]
    area = area_frames[:n]
    line = area_line(area, roi, crf, fps, preset)
    costs = {"area": {"bits": line.bits, "roi_sse": line.roi_sse, "cost": line.cost(line.bits, line.roi_sse)}}
    for c in options:
        if c.name in costs:
            continue
        if len(costs) > 1 and time.perf_counter() - t0 > budget_seconds:
            break  # area and the first candidate (the network's background) are always tried
        frames = (model_frames if c.background == "model" else area_frames)[:n]
        bits, sse = trial(frames, area, roi, crf, fps, preset, c.qoffset)
        costs[c.name] = {"bits": bits, "roi_sse": sse, "cost": line.cost(bits, sse)}
    allowed = {c.name: c for c in options} | {"area": Candidate("area", 0.0)}
    best = min((n for n in costs if n in allowed), key=lambda n: costs[n]["cost"])
    return Decision(start, len(model_frames), allowed[best], costs, time.perf_counter() - t0, line.lam)


def plan(model_frames, area_frames, softs, crf, fps, preset, segment: int = 50, trial_frames: int = 12,
         options=None, budget_seconds: float = float("inf")) -> list[Decision]:
    """Decisions for a whole clip held in memory (evaluation); inference decides as it streams."""
    return [decide(model_frames[i:i + segment], area_frames[i:i + segment], softs[i:i + segment], crf, fps,
                   preset, i, trial_frames, options, budget_seconds)
            for i in range(0, len(model_frames), segment)]


def apply(decisions, model_frames, area_frames, softs):
    """(frames, per-frame ROI rectangles, per-frame qoffsets) as the decisions say."""
    frames, rects, qoffsets = [], [], []
    for d in decisions:
        for t in range(d.start, d.start + d.frames):
            frames.append(model_frames[t] if d.choice.background == "model" else area_frames[t])
            rects.append(roi_rectangles(softs[t] >= 128) if d.choice.qoffset else [])
            qoffsets.append(d.choice.qoffset)
    return frames, rects, qoffsets
