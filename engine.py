"""Running the network on a video: numpy frames in, numpy frames out, state carried between chunks.

``stream`` is the one streaming loop (inference, evaluation, calibration): it primes the
background gate on the first frames, runs the network chunk by chunk with its temporal state
carried, and yields uint8 outputs as soon as a chunk is done -- memory stays flat and the
result does not depend on the chunk size.
"""
from __future__ import annotations

import argparse
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from errors import UserError
from roi_downsampler import DEFAULT_BACKGROUND_QUALITY, PARAM_NAMES, DownsamplerState, ROIDownsampler


@dataclass
class ModelKnobs:
    """The trained network's run-time knobs (not saved in checkpoints), declared once for
    inference, evaluation and benchmarks: add_model_args, model_knobs, apply_knobs."""
    background_strength: float = 1.0
    background_quality: float = DEFAULT_BACKGROUND_QUALITY


def add_model_args(p: argparse.ArgumentParser) -> None:
    d = ModelKnobs()
    p.add_argument("--background_strength", type=float, default=d.background_strength,
                   help="scale the learned background simplification and hold: 1 = as trained, 0 = plain area "
                        "background (for moving cameras or jittery ROI masks)")
    p.add_argument("--background_quality", type=float, default=d.background_quality,
                   help="background PSNR floor against area downscaling in every 8x8 block, dB before encoding "
                        "(keeps parked cars and signs recognisable); 0 = off, for maximum savings")


def model_knobs(args) -> ModelKnobs:
    """The ModelKnobs part of a parsed Namespace, checked (one-line errors)."""
    k = ModelKnobs(**{f: getattr(args, f) for f in ModelKnobs.__dataclass_fields__})
    if not 0.0 <= k.background_strength <= 1.0:  # also false for nan
        raise UserError(f"--background_strength must be in [0, 1], got {k.background_strength}")
    if not (k.background_quality == 0 or 10 <= k.background_quality <= 100):
        raise UserError(f"--background_quality must be 0 (off) or 10..100 dB, got {k.background_quality}")
    return k


def apply_knobs(model: ROIDownsampler, knobs: ModelKnobs, closed_loop: bool) -> ROIDownsampler:
    """Set the knobs on a loaded model. With the closed loop on, x264's trial encodes decide how
    much background to take, so the network simplifies it whatever its own gate says."""
    model.set_background_strength(knobs.background_strength)
    model.set_background_floor(knobs.background_quality)
    return set_closed_loop(model, closed_loop)


def set_closed_loop(model: ROIDownsampler, closed_loop: bool) -> ROIDownsampler:
    """Under the closed loop the trials decide whether the simplified background pays; without
    it, the analyser's gate does (calibrated to the loop's verdicts by calibrate_gate.py)."""
    model.follow_gate = not closed_loop
    return model


def frames_to_tensor(frames) -> torch.Tensor:
    """RGB uint8 frames (..., H, W, 3) (numpy) -> uint8 (..., 3, H, W), the network's input. The
    network also takes float in [0, 1]; kept in uint8, a 720p frame is 2.8 MB instead of 11, and
    only what the network reads at full resolution (the objects' blocks) is ever converted."""
    return torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)


def masks_to_tensor(masks) -> torch.Tensor:
    """ROI masks (..., H, W) with 1 = object (numpy, any dtype) -> float (..., 1, H, W), the network's input."""
    return torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).unsqueeze(-3)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """(..., C, h, w) in [0, 1] -> uint8 (..., h, w, C) numpy, rounded (half to even) as it is
    written to disk. OpenCV's rounding conversion (~6x faster than torch's on CPU), in the
    tensor's own (C, h, w) layout: only the uint8 result, a quarter of the bytes, is transposed."""
    y = x.detach().to("cpu", torch.float32).contiguous()
    if y.numel() and float(y.min()) < 0:  # convertScaleAbs takes |v|; above 1 it saturates at 255 itself
        y = y.clamp_min(0)
    u8 = cv2.convertScaleAbs(y.numpy().reshape(-1, max(y.shape[-1], 1)), alpha=255.0).reshape(y.shape)
    if u8.ndim == 3 and 1 < u8.shape[0] <= 4 and u8.shape[1] * u8.shape[2]:
        return cv2.merge(list(u8))  # the same interleaving as numpy's, ~20x faster (720p x2: 0.1 vs 3 ms)
    return np.ascontiguousarray(np.moveaxis(u8, -3, -1))


def pick_device(name: str) -> torch.device:
    """--device: 'auto' takes CUDA when present (the local rank's GPU under torchrun)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: unknown device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not supported; use cpu, cuda, cuda:N or auto")
    return device


@dataclass
class Chunk:
    """What stream() yields for each chunk of frames."""
    images: list[np.ndarray]  # (h, w, 3) uint8 output frames
    softs: list[np.ndarray]   # (h, w) uint8 soft importance masks
    params: list[dict]        # per frame, PARAM_NAMES -> value (as applied)
    inputs: list              # the (frame, mask) pairs this chunk was made from
    state: DownsamplerState
    gate_features: torch.Tensor  # (T, 4) what the background gate saw, per frame


def prepared(model: ROIDownsampler, pairs: Iterable, device="cpu", seconds: dict | None = None) -> Iterator[tuple]:
    """(frame, mask) pairs -> (frame, mask, model.ahead(model.prepare(...), ...)): the network's work
    on a frame that needs no state but the frame before it (area downscale, ROI pooling, the mask
    head's core and halo, the change since the previous frame, the analyser's features), done where
    the pairs are made -- under prefetch, on the input thread, beside the network's. The time it
    takes is added to seconds["prepare"]."""
    before = None
    for frame, mask in pairs:
        t = time.perf_counter()
        with torch.no_grad():  # grad mode is per thread
            ready = model.prepare(frames_to_tensor(frame)[None].to(device), masks_to_tensor(mask)[None].to(device))
            ready = before = model.ahead(ready, before)
        if seconds is not None:
            seconds["prepare"] = seconds.get("prepare", 0.0) + time.perf_counter() - t
        yield frame, mask, ready


@torch.no_grad()
def stream(model: ROIDownsampler, pairs: Iterable, batch: int = 8, device="cpu") -> Iterator[Chunk]:
    """Downsample an iterable of (RGB uint8 frame, float mask) pairs chunk by chunk (or of the
    triples ``prepared`` makes of them).

    The first chunk holds at least ``model.cfg.gate_lookahead`` frames: the background gate
    looks at them (``prime``) before deciding on frame 0. Frame by frame within a chunk (what
    ``model.forward`` does, without stacking full-resolution frames into one tensor first)."""
    if batch < 1:
        raise UserError(f"--batch_size must be >= 1, got {batch}")
    state, pending = None, []

    def run(chunk):
        nonlocal state
        if state is None:
            ahead = chunk[: model.cfg.gate_lookahead]
            state = model.prime(frames_to_tensor(np.stack([f for f, *_ in ahead]))[None].to(device),
                                masks_to_tensor(np.stack([m for _, m, *_ in ahead]))[None].to(device))
        images, softs, params, gate = [], [], [], []
        for frame, mask, *ahead in chunk:
            out, soft, p, state = model.step(frames_to_tensor(frame)[None].to(device),
                                             masks_to_tensor(mask)[None].to(device), state, *ahead)
            images.append(tensor_to_frames(out[0]))
            softs.append(tensor_to_frames(soft[0])[..., 0])
            params.append(dict(zip(PARAM_NAMES, p[0].tolist())))
            gate.append(model.analyzer.gate_features(state.stats_ema)[0])
        return Chunk(images, softs, params, [(f, m) for f, m, *_ in chunk], state, torch.stack(gate).cpu())

    for pair in pairs:
        pending.append(pair)
        if len(pending) >= max(batch, model.cfg.gate_lookahead if state is None else 0):
            yield run(pending)
            pending = []
    if pending:
        yield run(pending)


def downsample(model: ROIDownsampler, frames, masks, batch: int = 8, with_masks: bool = False):
    """The whole clip at once (evaluation, calibration): a list of uint8 output frames (and of
    uint8 soft masks with ``with_masks``)."""
    chunks = list(stream(model, zip(frames, masks), batch))
    images = [img for c in chunks for img in c.images]
    return (images, [m for c in chunks for m in c.softs]) if with_masks else images


def prefetch(items: Iterable, depth: int = 8, waited: dict | None = None) -> Iterator:
    """Iterate ``items`` on a worker thread, ``depth`` ahead: reading and the ROI detector run while
    the network works on earlier frames (both release the GIL). An error in the worker is raised
    here, where the item would have come; seconds spent waiting are added to waited["input"]."""
    q: queue.Queue = queue.Queue(depth)
    done, stop = object(), threading.Event()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", done))
        except BaseException as e:  # handed to the consumer
            q.put(("error", e))

    thread = threading.Thread(target=work, daemon=True, name="input")
    thread.start()
    try:
        while True:
            t = time.perf_counter()
            kind, value = q.get()
            if waited is not None:
                waited["input"] = waited.get("input", 0.0) + time.perf_counter() - t
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
