"""Teach the sequence analyser's background gate to predict the closed loop's choice.

At inference the closed loop (rd_control.py) trial-encodes the network's background and plain area
downscaling per segment and keeps the cheaper one, so the gate does not decide there. With
``--rd_control off`` nobody asks x264, and the gate -- a logistic function of four log clip
statistics (ROI area, motion, texture, ROI jump) -- has to guess. This step fits it to the loop's
own verdict on the checkpoint's training sequences, as training saw them: real footage with the
detector's masks (the same split and mask cache; the validation sequences are never used). Each
clip window is run with the gate open and put through the closed loop's own trials (the
product's preset, CRF 23 and 33): the verdict is the bytes of the network's background against
area's, each at its cheapest candidate that keeps the asked qualities. The same trials choose, also by x264, how long the soft mask outlives an
object (the temporal mask gate's bias). `bash train.sh` runs this after training.

    python calibrate_gate.py --checkpoint_path models/roi_downsampler_x2.pth   # rewritten in place
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the heavy imports: Ctrl-C while they load is one line
    from errors import quiet_interrupts
    quiet_interrupts()

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import engine
import metrics
import rd_control
from errors import UserError, run_cli
import data
from roi_sources import RoiOptions, check_roi_options, read_mask_file
from video_io import crop_to_multiple, read_image_rgb

CRFS = (23, 33)
# A half-open gate costs more than either extreme (measured with --background_strength 0.5: worse
# than 0 and than 1 on three of four evaluation clips), so the fitted logistic is made 8x steeper.
SHARPNESS = 8.0
# Candidate biases of the temporal mask gate (besides the trained one): shorter mask memories.
MASK_MEMORY_BIASES = (-2.0, -4.0, -8.0)


@dataclass
class CalibrationClip:
    name: str
    frames: list[np.ndarray]
    masks: list[np.ndarray]  # float 0/1, full resolution: what the network sees


def training_sequences(train_args: dict, run_dir: Path):
    """The checkpoint's training sequences (validation split left out) with the masks the network
    saw, cached where training cached them when ``run_dir`` is its output folder. The detector is
    loaded weights-only, like every model file."""
    given = dict(train_args.get("roi") or train_args)  # checkpoints before TrainConfig.roi kept the flags flat
    given["seg_imgsz"] = given.get("seg_imgsz") or None  # (and 0 for "the model's own size")
    roi = check_roi_options(RoiOptions(**{k: given[k] for k in RoiOptions.__dataclass_fields__ if k in given}))
    vals = [v for v in str(train_args.get("val_sequences", "")).split(",") if v]
    _, train, _ = data.prepare_sequences(str(train_args["dataset_path"]).split(","), roi, run_dir, vals,
                                         float(train_args.get("val_fraction", 0.2)))
    return train


def calibration_clips(sequences, s: int, length: int) -> list[CalibrationClip]:
    """Windows of `length` frames (every other window) of each sequence, with its input masks."""
    clips = []
    for seq in sequences:
        mask_files = seq.roi_masks or seq.masks
        for start in range(0, max(1, len(seq.frames) - length + 1), 2 * length):
            frames = [crop_to_multiple(read_image_rgb(p), 2 * s) for p in seq.frames[start:start + length]]
            masks = [crop_to_multiple((read_mask_file(p) > 0).astype(np.float32), 2 * s)
                     for p in mask_files[start:start + length]]
            clips.append(CalibrationClip(f"{seq.name}@{start}", frames, masks))
    if not clips:
        raise UserError(f"no training sequence of {length} frames to calibrate on; lower --clip_length")
    return clips


@torch.no_grad()
def run_with_gate(model, clip: CalibrationClip, gate: float | None):
    """Output frames, soft masks and the per-frame gate features; gate=None uses the model's own gate."""
    saved = model.analyzer.gate.bias.clone(), model.analyzer.gate.weight.clone()
    if gate is not None:
        model.analyzer.gate.weight.zero_()
        model.analyzer.gate.bias.fill_(30.0 if gate else -30.0)
    try:
        out, softs, feats = [], [], []
        for chunk in engine.stream(model, zip(clip.frames, clip.masks)):
            out.extend(chunk.images)
            softs.extend(chunk.softs)
            feats.append(chunk.gate_features)
        return out, softs, torch.cat(feats)
    finally:
        model.analyzer.gate.bias.copy_(saved[0])
        model.analyzer.gate.weight.copy_(saved[1])


def area_frames_if_roi(clip: CalibrationClip, s: int) -> list[np.ndarray] | None:
    """Area downscaling of the clip; None when it has no ROI (nothing to decide)."""
    if not any(m.any() for m in clip.masks):
        return None
    return metrics.resize_all(clip.frames, s)


def verdict(model, clip: CalibrationClip, area: list[np.ndarray] | None) -> float:
    """The open gate's bytes against area's, in percent, as the closed loop's trials measure them
    at CRFS (negative: the loop would keep the network's background)."""
    if area is None:
        return 0.0
    out, softs, _ = run_with_gate(model, clip, 1.0)
    return float(np.mean([rd_control.model_vs_area_pct(
        rd_control.decide({"area": area, "model": out}, softs, rd_control.EncoderOptions(crf=crf), 25.0))
        for crf in CRFS]))


@torch.no_grad()
def choose_mask_memory(model, clips, refs) -> tuple[float, dict, dict]:
    """How long the soft mask outlives an object (the temporal mask gate's bias), by x264: a long
    memory keeps a sharp, noisy trail behind moving objects, which costs bits wherever the
    background is simplified. Scored on the clips where the open gate pays with the trained
    memory (elsewhere the background stays area and the mask no longer matters). Returns the chosen
    bias, the mean relative cost of each option, and the verdicts measured with the chosen one."""
    trained = float(model.temporal.gate.bias.detach())
    scores, measured, judged = {}, {}, range(len(clips))
    for bias in dict.fromkeys((trained,) + MASK_MEMORY_BIASES):  # in order, without repeats
        model.temporal.gate.bias.fill_(bias)
        measured[bias] = {i: verdict(model, clips[i], refs[i])
                          for i in tqdm(judged, desc=f"mask memory, gate bias {bias:+.1f}", unit="clip")}
        if bias == trained:
            judged = [i for i, v in measured[bias].items() if v < 0]
        scores[bias] = float(np.mean([measured[bias][i] for i in judged])) if judged else 0.0
    best = min(scores, key=scores.get)
    model.temporal.gate.bias.fill_(best)
    return best, scores, measured[best]


def fit_gate(features: torch.Tensor, verdicts: torch.Tensor, weight: torch.Tensor, l2: float = 0.05):
    """Weighted logistic regression of "open" (verdict < 0) on the features, one row per sample.
    Returns (weight (4,), bias) on the raw gate features (standardisation folded in)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-3)
    x = (features - mean) / std
    y = (verdicts < 0).float()
    w = weight / weight.sum().clamp_min(1e-12)
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
    p.add_argument("--dataset_path", default=None,
                   help="training data (default: the checkpoint's own, with its ROI source and validation split)")
    p.add_argument("--run_dir", default=None,
                   help="where the detector masks are cached (default: .cache/calibration; pass the training "
                        "--output_dir to reuse its cache -- a checkpoint never decides where we write)")
    p.add_argument("--output_path", default=None, help="where to write (default: overwrite --checkpoint_path)")
    p.add_argument("--clip_length", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args) -> int:
    import demo_data
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint.check_writable(args.output_path or args.checkpoint_path, "--output_path")
    model, ckpt = checkpoint.load_model(args.checkpoint_path)
    engine.apply_knobs(model, engine.ModelKnobs(), closed_loop=False)  # the gate is what is calibrated
    s = model.scale_factor
    train_args = dict(ckpt.get("train_args") or {})
    train_args.setdefault("dataset_path", str(demo_data.training_set()))
    if args.dataset_path:
        train_args["dataset_path"] = args.dataset_path
    run_dir = Path(args.run_dir or demo_data.CACHE / "calibration")
    clips = calibration_clips(training_sequences(train_args, run_dir), s, args.clip_length)
    refs, feats = [], []
    for clip in tqdm(clips, desc="x264, area reference", unit="clip"):
        refs.append(area_frames_if_roi(clip, s))
        feats.append(run_with_gate(model, clip, None)[2][len(clip.frames) // 4:])  # once the summary settled
    memory, memory_scores, verdicts = choose_mask_memory(model, clips, refs)
    print("mask memory (temporal gate bias -> mean bytes of the open gate vs area at equal ROI-PSNR): "
          + ", ".join(f"{b:+.1f} -> {v:+.1f}%" for b, v in memory_scores.items()) + f"; chose {memory:+.1f}")
    # clips the memory search did not judge again are measured with the chosen memory now
    v = [verdicts[i] if i in verdicts else verdict(model, clip, ref)
         for i, (clip, ref) in enumerate(tqdm(list(zip(clips, refs)), desc="x264 verdicts", unit="clip"))]
    # every frame is a sample labelled with its clip's verdict; a clip weighs what is at stake (capped)
    v_rows = torch.cat([torch.full((len(f),), x) for f, x in zip(feats, v)])
    w_rows = torch.cat([torch.full((len(f),), min(abs(x), 40.0) / len(f)) for f, x in zip(feats, v)])
    weight, bias = fit_gate(torch.cat(feats), v_rows, w_rows)
    weight, bias = SHARPNESS * weight, SHARPNESS * bias
    with torch.no_grad():
        model.analyzer.gate.weight.copy_(weight[None])
        model.analyzer.gate.bias.fill_(float(bias))
    print(f"{'clip':32s} {'open gate: bytes vs area':>25s} {'gate':>6s}")
    rows = []
    for clip, x, f in zip(clips, v, feats):
        g = float(torch.sigmoid(f @ weight + bias).mean())
        rows.append({"clip": clip.name, "bytes_vs_area_pct": x, "gate": g})
        print(f"{clip.name:32s} {x:+24.1f}% {g:6.2f}")
    agree = sum((r["gate"] > 0.5) == (r["bytes_vs_area_pct"] < 0) for r in rows)
    print(f"gate agrees with the closed loop on {agree}/{len(rows)} calibration clips")
    extra = {k: v for k, v in ckpt.items() if k not in checkpoint.FORMAT_KEYS}
    extra["gate_calibration"] = {"clips": rows, "agreement": agree / len(rows), "crfs": list(CRFS),
                                 "preset": rd_control.EncoderOptions().preset,
                                 "mask_memory_bias": memory, "mask_memory_scores": memory_scores}
    out = args.output_path or args.checkpoint_path
    checkpoint.save(out, model, **extra)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv), "the checkpoint was not changed")


if __name__ == "__main__":
    sys.exit(main())
