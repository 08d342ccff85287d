"""Decide with the encoder: per segment, trial-encode candidate outputs with x264 and keep the one
that costs the fewest bytes for its ROI quality.

A candidate is a background (the network's simplified one, or plain area downscaling) and an
x264 ROI quantiser offset on the objects' macroblocks. For each segment (default 50 frames, 2 s
at 25 fps) the first ``trial_frames`` of a candidate are encoded with the same x264 settings as
the real stream, decoded, and placed against plain area downscaling's own curve:

    cost = slope * log2(bits) - ROI-PSNR      (ROI-PSNR against area downscaling, in the ROI)

where ``slope`` (dB per doubling of the bits) is measured, not assumed: area at this CRF and at
CRF+3, one extra trial. A candidate with a lower cost than area lies above area's curve in the
(log bytes, ROI-PSNR) plane -- the geometry of the BD-rate against area -- and its cost difference
converts to "bytes at equal ROI quality" (reported as ``bytes_vs_area_pct``). (An earlier version
priced SSE linearly, which can never credit a large quality gain and so rejected ROI offsets
that x264's own ROI mode shows to pay.) The search is greedy, to keep trials few: first the
background at no offset (network vs area), then the offsets on the better background; anything
must beat area by MARGIN_PCT to be chosen. Both
backgrounds already meet the background floor (the network applies it), so the floor needs no
trial. The look-ahead is one segment; ``budget_seconds`` bounds the trial time per segment
(area and the network's background are always tried; later offsets are skipped when it is spent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from errors import UserError
from video_io import encode_h264_bytes, roi_rectangles

QOFFSETS = (-0.15, -0.3)     # tried on the better background after "no offset" (x264: x 51 QP)
SEGMENT = 50                 # frames per decision (2 s at 25 fps: the look-ahead)
TRIAL_FRAMES = 12            # frames of each segment trial-encoded per candidate
DEFAULT_SLOPE = 4.0          # dB per doubling of the bits, when area's own curve cannot be measured
MARGIN_PCT = 2.0             # a candidate replaces plain area only if it saves more than this: x264's own
#                              byte counts vary a little from run to run, and a near-tie is not worth a switch


@dataclass
class Candidate:
    background: str   # "model" or "area"
    qoffset: float

    @property
    def name(self) -> str:
        return f"{self.background}{'' if not self.qoffset else f'+roi_qp{self.qoffset:+.2f}'}"


@dataclass
class Decision:
    """The choice for one segment and what every candidate tried cost."""
    start: int
    frames: int
    choice: Candidate
    costs: dict = field(default_factory=dict)   # name -> {"bits", "roi_psnr", "cost", "bytes_vs_area_pct"}
    seconds: float = 0.0
    slope: float = 0.0                          # dB of ROI-PSNR per doubling of the bits, on area's curve


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


def roi_of(softs) -> list[np.ndarray]:
    """The ROI the encoder and the cost see: soft importance >= 0.5."""
    return [s >= 128 for s in softs]


@dataclass
class AreaLine:
    """Plain area downscaling on a trial window: its bits and ROI-PSNR at this CRF, and the slope
    of its own curve (dB per doubling of the bits) that a candidate must beat."""
    bits: float
    psnr: float
    slope: float

    def cost(self, bits: float, psnr: float) -> float:
        return self.slope * np.log2(max(bits, 1.0)) - psnr

    def bytes_vs_area_pct(self, bits: float, psnr: float) -> float:
        """Bytes against area's at equal ROI-PSNR (negative: fewer), read off area's local curve."""
        return 100 * (2 ** ((self.cost(bits, psnr) - self.cost(self.bits, self.psnr)) / self.slope) - 1)


def trial(frames, area_frames, roi, crf: int, fps: float, preset: str, qoffset: float = 0.0):
    """(bits, ROI-PSNR against area downscaling) of frames encoded and decoded with x264.
    roi: (T,h,w,1) bool; an empty ROI scores the whole frame (nothing to protect: plain quality)."""
    rects = [roi_rectangles(r[..., 0]) for r in roi] if qoffset else None
    size, decoded = encode_h264_bytes(frames, fps, crf, preset, rois=rects, qoffset=qoffset)
    weight = roi if roi.any() else np.ones_like(roi)
    sse = sum(float((((d.astype(np.float64) - a) ** 2) * w).sum())  # a frame at a time: no clip-sized copies
              for d, a, w in zip(decoded, area_frames, weight))
    mse = sse / (3 * float(weight.sum()))
    return 8 * size, 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def area_line(area_frames, roi, crf: int, fps: float, preset: str) -> AreaLine:
    """Area downscaling at this CRF and at CRF+3: where it stands and its measured slope."""
    bits, psnr = trial(area_frames, area_frames, roi, crf, fps, preset)
    bits_p, psnr_p = trial(area_frames, area_frames, roi, min(51, crf + 3), fps, preset)
    usable = bits > bits_p and psnr > psnr_p
    slope = (psnr - psnr_p) / (np.log2(bits) - np.log2(bits_p)) if usable else DEFAULT_SLOPE
    return AreaLine(bits, psnr, float(slope))


def check_segment(segment: int, trial_frames: int) -> None:
    """--segment and --trial_frames, as every CLI that runs the loop checks them."""
    if segment < 1 or trial_frames < 1:
        raise UserError(f"--segment and --trial_frames must be >= 1, got {segment}, {trial_frames}")


def decide(model_frames, area_frames, softs, crf: int, fps: float, preset: str, start: int = 0,
           trial_frames: int = TRIAL_FRAMES, qoffset=None, budget_seconds: float = float("inf")) -> Decision:
    """Trial-encode the start of one segment; return the cheapest candidate. ``qoffset``: None
    searches QOFFSETS; a number fixes the offset (--roi_qoffset), the backgrounds are still tried."""
    t0 = time.perf_counter()
    n = min(trial_frames, len(model_frames))
    roi = np.stack(roi_of(softs[:n]))[..., None]
    area = area_frames[:n]
    line = area_line(area, roi, crf, fps, preset)
    costs, tried = {}, {}

    def measure(c: Candidate, bits=None, psnr=None):
        if bits is None:
            frames = (model_frames if c.background == "model" else area_frames)[:n]
            bits, psnr = trial(frames, area, roi, crf, fps, preset, c.qoffset)
        costs[c.name] = {"bits": bits, "roi_psnr": psnr, "cost": line.cost(bits, psnr),
                         "bytes_vs_area_pct": line.bytes_vs_area_pct(bits, psnr)}
        tried[c.name] = c

    first = 0.0 if qoffset is None else qoffset
    if first == 0.0:
        measure(Candidate("area", 0.0), line.bits, line.psnr)
    else:
        measure(Candidate("area", first))
    measure(Candidate("model", first))
    anchor = next(iter(tried))  # area at the first offset

    def cheapest() -> str:
        best = min(tried, key=lambda k: costs[k]["cost"])
        pays = costs[best]["bytes_vs_area_pct"] < costs[anchor]["bytes_vs_area_pct"] - MARGIN_PCT
        return best if pays else anchor

    if qoffset is None:
        background = tried[cheapest()].background
        for q in QOFFSETS:
            if time.perf_counter() - t0 > budget_seconds:
                break
            measure(Candidate(background, q))
    return Decision(start, len(model_frames), tried[cheapest()], costs, time.perf_counter() - t0, line.slope)


def plan(model_frames, area_frames, softs, crf, fps, preset, segment: int = SEGMENT, trial_frames: int = TRIAL_FRAMES,
         qoffset=None, budget_seconds: float = float("inf")) -> list[Decision]:
    """Decisions for a whole clip held in memory (evaluation); inference decides as it streams."""
    return [decide(model_frames[i:i + segment], area_frames[i:i + segment], softs[i:i + segment], crf, fps,
                   preset, i, trial_frames, qoffset, budget_seconds)
            for i in range(0, len(model_frames), segment)]


def output_of(choice: Candidate, image, area, soft):
    """(frame to encode, its ROI rectangles, its quantiser offset) for one frame under a choice."""
    frame = image if choice.background == "model" else area
    return frame, (roi_rectangles(soft >= 128) if choice.qoffset else []), choice.qoffset


def apply(decisions, model_frames, area_frames, softs):
    """(frames, per-frame ROI rectangles, per-frame qoffsets) as the decisions say."""
    per_frame = [output_of(d.choice, model_frames[t], area_frames[t], softs[t])
                 for d in decisions for t in range(d.start, d.start + d.frames)]
    return tuple(list(x) for x in zip(*per_frame))


def estimated_saving(decisions) -> float | None:
    """The chosen candidates' bytes against area's at equal ROI-PSNR, frame-weighted over the
    segments, as the trials estimated them (None when the loop did not run)."""
    known = [(d.frames, d.costs[d.choice.name]["bytes_vs_area_pct"]) for d in decisions if d.choice.name in d.costs]
    return sum(n * v for n, v in known) / sum(n for n, _ in known) if known else None
