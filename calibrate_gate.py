"""Fit the background gate against x264: simplify the background only where it pays.

Gradient training optimises differentiable stand-ins for the encoder's cost. They cannot see that
x264 pays for a jittery sharp/blurred boundary in every P-frame, or that it moves bits away from
the ROI once the background is flat -- so the analyser learns to simplify everywhere. This step
asks x264 itself. On calibration clips built from the training data (exact, jittered and motion
masks, simulated camera shake, softened footage) it encodes the model's output with the gate open
and with it closed (closed = area background) at five CRFs, takes the BD-rate between the two
(bytes at equal ROI-PSNR), and fits the gate -- a logistic function of four log clip statistics (ROI area,
motion, texture, ROI jump) -- to predict when opening it saves bytes, weighting each clip by how
much is at stake. `bash train.sh` runs it after training.

    python calibrate_gate.py --checkpoint_path models/roi_downsampler_x2.pth   # rewritten in place
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import engine
import metrics
from data import discover, jitter_masks
from errors import UserError, run_cli
from roi_sources import MotionSource, read_mask_file
from video_io import crop_to_multiple, read_image_rgb

CRFS = (18, 23, 28, 33, 38)
# A half-open gate costs more than either extreme (measured with --background_strength 0.5: worse
# than 0 and than 1 on three of four evaluation clips), so the fitted logistic is made 8x steeper.
SHARPNESS = 8.0
# Candidate biases of the temporal mask gate (besides the trained one): shorter mask memories.
MASK_MEMORY_BIASES = (-2.0, -4.0, -8.0)


@dataclass
class CalibrationClip:
    name: str
    frames: list[np.ndarray]
    masks: list[np.ndarray]  # float 0/1, full resolution


def _shake(frames, masks, rng, step: float = 3.0):
    """Simulated hand-held camera: a random-walk translation per frame (reflected borders)."""
    pos, out_f, out_m = np.zeros(2), [], []
    for f, m in zip(frames, masks):
        pos = 0.8 * pos + rng.normal(0, step, 2)
        a = np.float32([[1, 0, pos[0]], [0, 1, pos[1]]])
        size = f.shape[1::-1]
        out_f.append(cv2.warpAffine(f, a, size, borderMode=cv2.BORDER_REFLECT))
        out_m.append(cv2.warpAffine(m, a, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT))
    return out_f, out_m


def _motion_masks(frames):
    source = MotionSource()
    return [source.mask(f) for f in frames]


def calibration_clips(dataset_path, s: int, length: int, cache_dir: Path, seed: int = 0) -> list[CalibrationClip]:
    """Variants of every training sequence: what the ROI sources and cameras users have look like."""
    found = discover(dataset_path, cache_dir)
    rng = np.random.default_rng(seed)
    clips = []
    for seq in found.sequences:
        for start in range(0, max(1, len(seq.frames) - length + 1), 2 * length):
            files = seq.frames[start:start + length]
            frames = [crop_to_multiple(read_image_rgb(p), 2 * s) for p in files]
            if seq.masks:
                exact = [crop_to_multiple((read_mask_file(p) > 0).astype(np.float32), 2 * s)
                         for p in seq.masks[start:start + length]]
                clips.append(CalibrationClip(f"{seq.name}@{start}/exact", frames, exact))
                jittered = list(jitter_masks(np.stack(exact).astype(np.uint8), rng).astype(np.float32))
                clips.append(CalibrationClip(f"{seq.name}@{start}/jittered", frames, jittered))
                sf, sm = _shake(frames, exact, rng)
                clips.append(CalibrationClip(f"{seq.name}@{start}/shaken+exact", sf, sm))
                clips.append(CalibrationClip(f"{seq.name}@{start}/shaken+motion", sf, _motion_masks(sf)))
            clips.append(CalibrationClip(f"{seq.name}@{start}/motion", frames, _motion_masks(frames)))
            soft = [cv2.GaussianBlur(f, (0, 0), 1.5) for f in frames]  # upscaled / clean footage
            clips.append(CalibrationClip(f"{seq.name}@{start}/soft+motion", soft, _motion_masks(soft)))
    if not clips:
        raise UserError(f"--dataset_path {dataset_path}: no sequence of {length} frames to calibrate on")
    return clips


@torch.no_grad()
def run_with_gate(model, clip: CalibrationClip, gate: float | None):
    """Output frames and the per-frame gate features; gate=None uses the model's own gate."""
    saved = model.analyzer.gate.bias.clone(), model.analyzer.gate.weight.clone()
    if gate is not None:
        model.analyzer.gate.weight.zero_()
        model.analyzer.gate.bias.fill_(30.0 if gate else -30.0)
    try:
        out, feats = [], []
        for chunk in engine.stream(model, zip(clip.frames, clip.masks)):
            out.extend(chunk.images)
            feats.append(chunk.gate_features)
        return out, torch.cat(feats)
    finally:
        model.analyzer.gate.bias.copy_(saved[0])
        model.analyzer.gate.weight.copy_(saved[1])


def rd_curve(out, clip: CalibrationClip, s: int):
    """(bytes, ROI-PSNR against area) at every CRF, measured as evaluate.py does, or None when
    the clip has no ROI."""
    roi = metrics.roi_at_output(clip.masks, s)
    if not roi.any():
        return None
    ref = np.stack(metrics.resize_all(clip.frames, s))
    points = [metrics.rd_point(out, ref, roi, crf, 25.0)[0] for crf in CRFS]
    return [p["bytes"] for p in points], [p["roi_psnr"] for p in points]


def verdict(closed, opened) -> float:
    """BD-rate of the open gate against the closed one (negative: simplifying saves bytes)."""
    return 0.0 if closed is None else metrics.bd_rate(*closed, *opened)


@torch.no_grad()
def choose_mask_memory(model, clips, s, closed) -> tuple[float, dict, dict]:
    """How long the soft mask outlives an object (the temporal mask gate's bias), by x264: the
    learned memory keeps a sharp, noisy trail behind moving objects, which costs bits wherever
    the background is simplified. Scored on the clips where simplifying pays with the trained
    memory (elsewhere the gate closes and the mask no longer matters). Returns the chosen bias,
    the mean BD-rate of each option, and the BD-rates measured with the chosen one (clip index ->
    BD-rate), so they need not be measured again."""
    trained = float(model.temporal.gate.bias.detach())
    scores, measured, judged = {}, {}, range(len(clips))  # judged: where the memory matters
    for bias in dict.fromkeys((trained,) + MASK_MEMORY_BIASES):  # in order, without repeats
        model.temporal.gate.bias.fill_(bias)
        measured[bias] = {i: verdict(closed[i], rd_curve(run_with_gate(model, clips[i], 1.0)[0], clips[i], s))
                          for i in tqdm(judged, desc=f"mask memory, gate bias {bias:+.1f}", unit="clip")}
        if bias == trained:
            judged = [i for i, bd in measured[bias].items() if bd < 0]
        scores[bias] = float(np.mean([measured[bias][i] for i in judged])) if judged else 0.0
    best = min(scores, key=scores.get)
    model.temporal.gate.bias.fill_(best)
    return best, scores, measured[best]


def fit_gate(features: torch.Tensor, bd: torch.Tensor, weight: torch.Tensor, l2: float = 0.05):
    """Weighted logistic regression of "open" (BD-rate < 0) on the features, one row per sample.
    Returns (weight (4,), bias) on the raw gate features (standardisation folded in)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-3)
    x = (features - mean) / std
    y = (bd < 0).float()
    w = weight / weight.sum()
    theta = torch.zeros(5, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ theta[:4] + theta[4]
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + l2 * theta[:4].square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    a, b = theta.detach()[:4], theta.detach()[4]
    return a / std, b - (a * mean / std).sum()


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_path", required=True, help="checkpoint to calibrate")
    p.add_argument("--dataset_path", default=None, help="training data (default: the default training set)")
    p.add_argument("--output_path", default=None, help="where to write (default: overwrite --checkpoint_path)")
    p.add_argument("--clip_length", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args) -> int:
    import demo_data
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = args.dataset_path or demo_data.training_set()
    model, ckpt = checkpoint.load_model(args.checkpoint_path)
    s = model.scale_factor
    clips = calibration_clips(dataset, s, args.clip_length, demo_data.CACHE / "calibration")
    closed, feats = [], []
    for clip in tqdm(clips, desc="x264, gate closed", unit="clip"):
        images, f = run_with_gate(model, clip, 0.0)  # the gate's inputs do not depend on the gate
        closed.append(rd_curve(images, clip, s))
        feats.append(f[len(f) // 4:])  # the running summary once it has settled
    memory, memory_scores, known = choose_mask_memory(model, clips, s, closed)
    print("mask memory (temporal gate bias -> mean BD-rate of the open gate): "
          + ", ".join(f"{b:+.1f} -> {v:+.1f}%" for b, v in memory_scores.items()) + f"; chose {memory:+.1f}")
    bds = [known[i] if i in known else verdict(c, rd_curve(run_with_gate(model, clip, 1.0)[0], clip, s))
           for i, (clip, c) in enumerate(tqdm(list(zip(clips, closed)), desc="x264 verdicts", unit="clip"))]
    # every frame is a sample labelled with its clip's verdict; a clip weighs what is at stake (|BD|, capped)
    bd_rows = torch.cat([torch.full((len(f),), bd) for f, bd in zip(feats, bds)])
    w_rows = torch.cat([torch.full((len(f),), min(abs(bd), 40.0) / len(f)) for f, bd in zip(feats, bds)])
    weight, bias = fit_gate(torch.cat(feats), bd_rows, w_rows)
    weight, bias = SHARPNESS * weight, SHARPNESS * bias
    with torch.no_grad():
        model.analyzer.gate.weight.copy_(weight[None])
        model.analyzer.gate.bias.fill_(float(bias))
    print(f"{'clip':40s} {'BD open vs closed':>18s} {'gate':>6s}")
    rows = []
    for clip, bd, f in zip(clips, bds, feats):
        g = float(torch.sigmoid(f @ weight + bias).mean())
        rows.append({"clip": clip.name, "bd_rate_open_vs_closed": bd, "gate": g})
        print(f"{clip.name:40s} {bd:+17.1f}% {g:6.2f}")
    agree = sum((r["gate"] > 0.5) == (r["bd_rate_open_vs_closed"] < 0) for r in rows)
    print(f"gate agrees with x264 on {agree}/{len(rows)} calibration clips")
    extra = {k: v for k, v in ckpt.items() if k not in checkpoint.FORMAT_KEYS}
    extra["gate_calibration"] = {"clips": rows, "agreement": agree / len(rows), "crfs": list(CRFS),
                                 "mask_memory_bias": memory, "mask_memory_scores": memory_scores}
    out = args.output_path or args.checkpoint_path
    checkpoint.save(out, model, **extra)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv), "the checkpoint was not changed")


if __name__ == "__main__":
    sys.exit(main())
