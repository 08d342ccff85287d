"""Decide with the encoder: per segment, trial-encode candidate outputs with x264 and keep the one
with the fewest bytes at the quality the user asked for.

The user asks for two qualities in x264's own units: ``--crf`` for the objects and
``--background_crf`` for the rest. The stream is coded at ``--crf``; a candidate codes the
background ``delta`` CRF steps coarser through x264's ROI quantiser offsets (ffmpeg's ``addroi``:
the whole frame at +delta/51, the objects' macroblocks listed first at 0, the first region wins).
That is x264's own "base CRF + delta with the ROI at -delta/51" (measured equal within 0.5 % of
the bytes and 0.05 dB), but it can change from frame to frame inside one stream. A candidate is
such a delta and a background source: the network's simplified background or plain area
downscaling.

A coarser background also makes the objects a little worse (their predictions and deblocking
reach across the boundary); where that takes them below the asked quality, the same candidate
is tried with the objects ROI_BOOST steps finer.

For each segment (default 50 frames, 2 s at 25 fps) the first ``trial_frames`` of the candidates
are encoded with the stream's own settings, decoded and measured against area downscaling --
except a background that stays still over the trial window, measured against its temporal median
(``scoring_reference``: a still background is the median, not a copy of its sensor noise).
Bytes are the whole segment's, estimated (``segment_bits``): every trial stream starts with an
intra frame, but the stream itself has one at its start only (x264's keyint is 250 frames), and
a simplified background saves far more in an intra frame than in the predicted frames that make
up almost all of a segment:

- objects: ROI-PSNR must be >= plain area at ``--crf`` minus ROI_TOLERANCE_DB;
- background: PSNR outside the ROI must be >= area's background coded at ``--background_crf``
  (the area candidate at the largest delta) minus the same tolerance;
- of the candidates that pass, the fewest bytes wins -- and only if it saves more than MARGIN_PCT
  against plain area at ``--crf``; otherwise the segment is plain area at ``--crf`` (+0 %).

Bytes fall as delta grows, so each background is tried from the largest delta down and stops
at the first that passes (or as soon as it cannot beat the best so far). ``budget_seconds``
bounds the trial time per segment; plain area at ``--crf`` is always measured first.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from errors import UserError
from video_io import measure_h264, quant_regions, roi_rectangles, temporal_median, yuv_frame

SEGMENT = 50                 # frames per decision (2 s at 25 fps: the look-ahead)
TRIAL_FRAMES = 12            # frames of each segment trial-encoded per candidate
ROI_TOLERANCE_DB = 0.2       # objects (and background) may be this much below their reference
ROI_BOOST = 2                # CRF steps finer for the objects when a coarser background pulls them down
MARGIN_PCT = 2.0             # a candidate replaces plain area only if it saves more than this: x264's own
#                              byte counts vary a little from run to run, and a near-tie is not worth a switch
STILL_NOISE = 12             # uint8 levels: a pixel this close to its temporal median in every trial frame is still
BACKGROUND_CRF_STEP = 6      # default --background_crf = --crf + 6 (see README: about half the background's bits)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass
class EncoderOptions:
    """How video.mp4 is encoded and decided: the same flags (add_encoder_args) for inference,
    evaluation and calibration."""
    crf: int = 23                          # the objects' quality
    background_crf: Optional[int] = None   # None: crf + BACKGROUND_CRF_STEP; == crf: no ROI coding
    preset: str = "veryfast"
    rd_control: bool = True
    segment: int = SEGMENT
    trial_frames: int = TRIAL_FRAMES
    rd_budget: float = 5.0                 # seconds of trials per segment, at most (a safety net: when it
    #                                        bites, the choice depends on the machine's speed)

    @property
    def max_delta(self) -> int:
        bg = self.crf + BACKGROUND_CRF_STEP if self.background_crf is None else self.background_crf
        return max(0, min(51, bg) - self.crf)


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    """The encoding flags every CLI that writes or measures video.mp4 shares."""
    d = EncoderOptions()
    p.add_argument("--crf", type=int, default=d.crf,
                   help="objects' quality, as x264's CRF (0-51, lower = better): inside the ROI video.mp4 is at "
                        "least as good as plain area downscaling at this CRF")
    p.add_argument("--background_crf", default=None,
                   help=f"background's quality floor as a CRF (default: --crf + {BACKGROUND_CRF_STEP}); "
                        f"'same' = the background as good as the objects (no ROI coding)")
    p.add_argument("--preset", default=d.preset, metavar="PRESET",
                   help=f"x264 preset of video.mp4 and its trials ({', '.join(PRESETS)})")
    p.add_argument("--rd_control", default="on", choices=["on", "off"],
                   help="on: per segment, trial-encode the candidates (network/area background x background CRF) "
                        "and keep the fewest bytes at the asked quality; off: the network's output, background "
                        "at --background_crf")
    p.add_argument("--segment", type=int, default=d.segment, help="frames per closed-loop decision (look-ahead)")
    p.add_argument("--trial_frames", type=int, default=d.trial_frames,
                   help="frames at the start of each segment that the closed loop trial-encodes")
    p.add_argument("--rd_budget", type=float, default=d.rd_budget,
                   help="seconds of trial encodes per segment: candidates not tried by then are skipped")


def encoder_options(args) -> EncoderOptions:
    """The EncoderOptions part of a parsed Namespace, checked (one-line errors)."""
    opts = EncoderOptions(crf=args.crf, background_crf=parse_background_crf(args.background_crf, args.crf),
                          preset=args.preset, rd_control=args.rd_control == "on", segment=args.segment,
                          trial_frames=args.trial_frames, rd_budget=args.rd_budget)
    check(opts)
    return opts


def parse_background_crf(text, crf: int) -> Optional[int]:
    if text is None:
        return None
    if str(text).strip().lower() == "same":
        return crf
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--background_crf {text}: give a CRF (an integer, e.g. {crf + BACKGROUND_CRF_STEP}) "
                        f"or 'same'") from None
    return value


def check(opts: EncoderOptions) -> None:
    """Every encoding flag, before any work starts."""
    if not 0 <= opts.crf <= 51:
        raise UserError(f"--crf must be in 0..51, got {opts.crf}")
    if opts.background_crf is not None and not opts.crf <= opts.background_crf <= 51:
        raise UserError(f"--background_crf must be in {opts.crf}..51 (not better than --crf {opts.crf}), "
                        f"got {opts.background_crf}")
    if opts.preset not in PRESETS:
        raise UserError(f"--preset {opts.preset}: choose one of {', '.join(PRESETS)}")
    if opts.segment < 1 or opts.trial_frames < 1:
        raise UserError(f"--segment and --trial_frames must be >= 1, got {opts.segment}, {opts.trial_frames}")
    if not opts.rd_budget > 0:
        raise UserError(f"--rd_budget must be > 0 seconds, got {opts.rd_budget}")


@dataclass(frozen=True)
class Candidate:
    background: str   # "model" or "area"
    delta: int = 0    # CRF steps the background is coded coarser than the objects
    boost: int = 0    # CRF steps the objects are coded finer, to make up for coarser surroundings

    @property
    def name(self) -> str:
        return self.background + (f"+bg{self.delta}" if self.delta else "") + (f"+roi{self.boost}" if self.boost else "")


AREA = Candidate("area", 0)


@dataclass
class Decision:
    """The choice for one segment and what every candidate tried measured."""
    start: int
    frames: int
    choice: Candidate
    trials: dict = field(default_factory=dict)  # name -> {"bits", "roi_psnr", "bg_psnr", "passes", "bytes_vs_area_pct"}
    seconds: float = 0.0


def roi_of(soft: np.ndarray) -> np.ndarray:
    """The ROI the encoder and the trials see: soft importance >= 0.5."""
    return soft >= 128


def regions_of(choice: Candidate, soft: np.ndarray, rects=None):
    """x264 quantiser regions of one frame under a choice (empty: plain CRF); rects: the ROI's
    macroblock rectangles when known (they depend on the soft mask only)."""
    if not choice.delta:
        return []
    rects = roi_rectangles(roi_of(soft)) if rects is None else rects
    return quant_regions(rects, -choice.boost / 51, choice.delta / 51, soft.shape[1], soft.shape[0])


def output_of(choice: Candidate, images: dict, soft):
    """(frame to encode, its x264 quantiser regions) for one frame under a choice; images maps a
    background source ("area", "model") to this frame's image."""
    return images[choice.background], regions_of(choice, soft)


def segment_bits(trial_bytes: int, intra_bytes: int, trial_frames: int, segment_frames: int,
                 starts_stream: bool) -> float:
    """A segment's bits estimated from a trial of its first frames: the trial's intra frame
    counts only where the stream itself starts, and its predicted frames stand for all of the
    segment's (a 12-frame trial is a third intra frame; a 50-frame segment inside a stream is
    none)."""
    if trial_frames < 2:  # an intra frame alone: nothing to scale
        return 8.0 * trial_bytes
    per_predicted = (trial_bytes - intra_bytes) / (trial_frames - 1)
    if starts_stream:
        return 8.0 * (intra_bytes + per_predicted * (segment_frames - 1))
    return 8.0 * per_predicted * segment_frames


def trial(frames, references, regions, crf: int, fps: float, preset: str, segment_frames: int,
          starts_stream: bool) -> dict:
    """Bits of the whole segment (segment_bits), ROI-PSNR and background PSNR (against
    ``references``, (image, ROI) per frame, see scoring_reference) of its first frames coded with
    these x264 regions."""
    m = measure_h264(frames, references, fps, crf, preset, regions)
    bits = segment_bits(m.pop("bytes"), m.pop("intra_bytes"), len(frames), segment_frames, starts_stream)
    return {"bits": bits, **m}


def scoring_reference(area_frames, softs) -> list:
    """What the trials are measured against: area downscaling, except in background pixels that
    stay within STILL_NOISE of their temporal median over the whole trial window -- there the
    median, the still background without its sensor noise. Otherwise a static camera's denoised
    background would score below a faithful copy of the noise."""
    median = temporal_median(area_frames)
    spread = np.zeros_like(median)  # the largest change from the median over the frames, per colour
    for a in area_frames:
        np.maximum(spread, cv2.absdiff(a, median), out=spread)
    still = spread.max(axis=2) <= STILL_NOISE
    return [np.where((still & ~roi_of(s))[..., None], median, a) for a, s in zip(area_frames, softs)]


def deltas(max_delta: int) -> list[int]:
    """The background steps tried, largest first: max, 2/3 and 1/3 of it."""
    return sorted({d for d in (max_delta, round(2 * max_delta / 3), round(max_delta / 3)) if d > 0}, reverse=True)


def _at_least(value, floor) -> bool:
    """value (None: nothing to measure) is within ROI_TOLERANCE_DB of floor (None: unknown, fails)."""
    return value is None or (floor is not None and value >= floor - ROI_TOLERANCE_DB)


def decide(frames: dict, softs, opts: EncoderOptions, fps: float, start: int = 0,
           segment_frames: Optional[int] = None) -> Decision:
    """Trial-encode the start of one segment; return the candidate with the fewest bytes that
    keeps the objects at --crf and the background at --background_crf (else plain area).
    frames maps each background source to the segment's first frames (at least the trial's):
    "area", and "model" (the network's output); segment_frames: the segment's length (default:
    as many as given)."""
    t0 = time.perf_counter()
    segment_frames = segment_frames or len(frames["area"])
    n = min(opts.trial_frames, len(frames["area"]))
    softs_n = softs[:n]
    rois = [roi_of(s).view(np.uint8) for s in softs_n]  # 0/1, as the QualityMeter takes them (no copy per trial)
    references = list(zip(scoring_reference(frames["area"][:n], softs_n), rois))
    rects = [roi_rectangles(roi) for _, roi in references]
    yuv: dict[str, list] = {}  # each image converted once, for all of its trials
    trials: dict[Candidate, dict] = {}

    def measure(c: Candidate) -> dict:
        if c.background not in yuv:
            yuv[c.background] = [yuv_frame(f) for f in frames[c.background][:n]]
        trials[c] = trial(yuv[c.background], references, [regions_of(c, s, r) for s, r in zip(softs_n, rects)],
                          opts.crf, fps, opts.preset, segment_frames, start == 0)
        return trials[c]

    ref = measure(AREA)
    best, best_bits = AREA, ref["bits"] * (1 - MARGIN_PCT / 100)
    steps = deltas(opts.max_delta)
    floor = ref["bg_psnr"] if not steps else None  # the background of area coded at --background_crf

    def passes(c: Candidate, r: dict) -> bool:
        background_ok = c.background == "area" or _at_least(r["bg_psnr"], floor)  # area: at most max_delta
        r["passes"] = _at_least(r["roi_psnr"], ref["roi_psnr"]) and background_ok
        return background_ok

    for background in ["area"] + [k for k in frames if k != "area"]:
        for delta in steps + ([0] if background != "area" else []):
            if time.perf_counter() - t0 > opts.rd_budget:
                break
            c = Candidate(background, delta)
            r = measure(c)
            if c == Candidate("area", opts.max_delta):
                floor = r["bg_psnr"]
            if passes(c, r) and not r["passes"] and delta:  # only the objects fell short: code them finer
                c = Candidate(background, delta, ROI_BOOST)
                r = measure(c)
                passes(c, r)
            if r["bits"] >= best_bits:
                break  # smaller steps only cost more
            if r["passes"]:
                best, best_bits = c, r["bits"]
                break
    for c, r in trials.items():
        r["bytes_vs_area_pct"] = 100 * (r["bits"] / ref["bits"] - 1)
        r.setdefault("passes", c == AREA)
    return Decision(start, len(frames["area"]), best, {c.name: r for c, r in trials.items()},
                    time.perf_counter() - t0)  # frames: those given so far (SegmentDecider counts on)


def model_vs_area_pct(d: Decision) -> float:
    """Bytes of the network's background against area's, each at its cheapest trial that kept the
    asked qualities (a background that never did is judged by its cheapest trial, at least +MARGIN_PCT)."""
    def cheapest(background, passing):
        bits = [r["bits"] for k, r in d.trials.items() if k.startswith(background) and (r["passes"] or not passing)]
        return min(bits) if bits else None
    area = cheapest("area", True)
    model = cheapest("model", True)
    if model is not None:
        return 100 * (model / area - 1)
    tried = cheapest("model", False)
    return MARGIN_PCT if tried is None else max(MARGIN_PCT, 100 * (tried / area - 1))


def fixed(opts: EncoderOptions, start: int, frames: int) -> Decision:
    """--rd_control off: the network's output, background at --background_crf, no trials."""
    return Decision(start, frames, Candidate("model", opts.max_delta))


def plan(frames: dict, softs, opts: EncoderOptions, fps: float):
    """A whole clip held in memory (evaluation), decided as inference decides it: (decisions,
    frames to encode, per-frame x264 regions)."""
    decider = SegmentDecider(opts, fps, total_frames=len(softs))
    decided = [f for i, soft in enumerate(softs) for f in decider.add(i, {k: v[i] for k, v in frames.items()}, soft)]
    decided += decider.flush()
    return decider.decisions, [f[1] for f in decided], [f[2] for f in decided]


class SegmentDecider:
    """The decision stage of the streaming pipeline: frames come in one at a time ({source: image},
    soft mask, and anything to carry along) and go out as (index, frame to encode, x264 regions,
    area image, soft mask, carried). A segment is decided as soon as its first ``trial_frames``
    frames are in -- all that its trials look at -- and its other frames go out as they come, so
    only those first frames are ever held. ``total_frames``, when known, makes the estimate of a
    short last segment's bytes exact (it scales every candidate alike, except in a clip shorter
    than one segment)."""

    def __init__(self, opts: EncoderOptions, fps: float, total_frames: Optional[int] = None):
        self.opts, self.fps, self.total = opts, fps, total_frames
        self.pending: list = []          # the current segment's frames, while it is undecided
        self.current: Optional[Decision] = None
        self.decisions: list[Decision] = []

    def add(self, index: int, images: dict, soft, carried=None) -> list:
        frame = (index, images, soft, carried)
        if self.current is not None and self.current.frames < self.opts.segment:
            self.current.frames += 1
            return self._out(self.current, [frame])
        self.current = None  # a new segment starts here
        self.pending.append(frame)
        needed = min(self.opts.trial_frames, self.opts.segment) if self.opts.rd_control else 1
        return self._decide(self._expected_length()) if len(self.pending) >= needed else []

    def flush(self) -> list:
        """The end of the input: decide what is still undecided (a segment shorter than a trial)."""
        return self._decide(len(self.pending)) if self.pending else []

    def _expected_length(self) -> int:
        start = self.pending[0][0]
        return self.opts.segment if self.total is None else max(1, min(self.opts.segment, self.total - start))

    def _decide(self, segment_frames: int) -> list:
        start, opts = self.pending[0][0], self.opts
        if opts.rd_control:
            frames = {k: [p[1][k] for p in self.pending] for k in self.pending[0][1]}
            d = decide(frames, [p[2] for p in self.pending], opts, self.fps, start, segment_frames)
        else:
            d = fixed(opts, start, len(self.pending))
        self.decisions.append(d)
        self.current, pending, self.pending = d, self.pending, []
        return self._out(d, pending)

    @staticmethod
    def _out(d: Decision, frames) -> list:
        return [(i, *output_of(d.choice, images, soft), images["area"], soft, carried)
                for i, images, soft, carried in frames]

    def report(self) -> dict:
        ds = self.decisions
        return {"background_crf_delta": [d.choice.delta for d in ds for _ in range(d.frames)],
                "rd_control": [{"start": d.start, "frames": d.frames, "choice": d.choice.name, "seconds": d.seconds,
                                "trials": d.trials} for d in ds],
                "rd_control_seconds": sum(d.seconds for d in ds),
                "trial_bytes_vs_area_pct": trial_saving(ds)}


def trial_saving(decisions) -> Optional[float]:
    """The chosen candidates' trial bytes against plain area's at --crf, frame-weighted (None when
    the loop did not run). The measured figure is in the report beside it."""
    known = [(d.frames, d.trials[d.choice.name]["bytes_vs_area_pct"]) for d in decisions if d.choice.name in d.trials]
    return sum(n * v for n, v in known) / sum(n for n, _ in known) if known else None
