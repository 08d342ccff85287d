"""Rate-distortion evaluation of downscalers after a real encoder (x264), as the field reports it.

    python evaluate.py --input clip.mp4 --roi_source motion --output_dir output/eval/clip
    python evaluate.py --suite --scale_factor 2          # the README's table, on held-out clips

Each method downscales the same clip under the same ROI masks; every output is encoded with
libx264 at CRF 18/23/28/33/38 and decoded; distortion is measured against the area-downscaled
reference inside the ROI (ROI-PSNR, ROI-SSIM) and outside it (background PSNR). BD-rate (bytes
vs ROI-PSNR, Akima, `bjontegaard` package) is reported against plain area downscaling.
The clip is held in memory: evaluation is for short clips (--max_frames).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import engine
import metrics
from video_io import FrameReader, atomic_write_bytes, crop_to_multiple, encode_h264_bytes
from errors import UserError, run_cli

DEFAULT_CRFS = (18, 23, 28, 33, 38)
ALL_METHODS = ("model", "area", "bicubic", "lanczos", "blur_heuristic")


# ----------------------------------------------------------------------------- methods


def blur_heuristic(frames, masks, s, sigma: float = 2.0, feather: int = 7):
    """Strong hand-made baseline: area downscale, Gaussian-blurred background, the same masks
    max-pooled to output size, dilated and feathered."""
    out = []
    for f, m in zip(frames, masks):
        small = cv2.resize(f, (f.shape[1] // s, f.shape[0] // s), interpolation=cv2.INTER_AREA)
        core = metrics.block_max(m, s).astype(np.float32)  # every ROI pixel stays sharp; the feather goes outward
        mk = np.maximum(core, cv2.GaussianBlur(cv2.dilate(core, np.ones((3, 3), np.uint8)), (feather, feather), 0))
        blurred = cv2.GaussianBlur(small, (0, 0), sigma).astype(np.float32)
        out.append((small * mk[..., None] + blurred * (1 - mk[..., None])).round().astype(np.uint8))
    return out


def downscale(method, frames, masks, s, model=None):
    if method == "model":
        return engine.downsample(model, frames, masks)
    if method == "blur_heuristic":
        return blur_heuristic(frames, masks, s)
    interp = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}[method]
    return metrics.resize_all(frames, s, interp)


# ----------------------------------------------------------------------------- evaluation


def evaluate_clip(frames, masks, methods, s, crfs=DEFAULT_CRFS, fps=25.0, model=None, preset="medium", name="clip"):
    """All metrics for every method on one clip. frames: list of RGB uint8, masks: list of uint8 0/1."""
    ref = np.stack(metrics.resize_all(frames, s))
    roi = metrics.roi_at_output(masks, s)
    if not roi.any():
        raise UserError(f"{name}: the ROI masks are empty on every frame; ROI metrics need objects "
                        f"(check --masks_dir / --roi_source)")
    results = {}
    for method in methods:
        t = time.perf_counter()
        out = downscale(method, frames, masks, s, model)
        seconds = time.perf_counter() - t
        v = np.stack(out)
        r = {"fps": len(out) / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "flicker_bg": metrics.flicker(v, ref, ~roi), "flicker_roi": metrics.flicker(v, ref, roi),
             "temporal_activity_bg": float(np.abs(np.diff(v.astype(np.float32), axis=0))[~roi[1:]].mean()),
             "warping_error_bg": metrics.warping_error(v, ref, ~roi), "rd": []}
        for crf in tqdm(crfs, desc=f"{name}: {method}", unit="crf", leave=False):
            point, d = metrics.rd_point(out, ref, roi, crf, fps, preset)
            r["rd"].append({**point, "roi_ssim": metrics.masked_ssim(d, ref, roi[..., 0]),
                            "bg_psnr": metrics.masked_psnr(d, ref, ~roi)})
        results[method] = r
    if "area" in results:
        anchor = results["area"]["rd"]
        for method, r in results.items():
            r["bd_rate_vs_area"] = metrics.bd_rate([p["bytes"] for p in anchor], [p["roi_psnr"] for p in anchor],
                                                   [p["bytes"] for p in r["rd"]], [p["roi_psnr"] for p in r["rd"]])
    return {"frames": len(frames), "size": list(frames[0].shape[1::-1]), "roi_fraction": float(roi.mean()),
            "scale_factor": s, "crfs": list(crfs), "methods": results}


# ----------------------------------------------------------------------------- reporting


def markdown_table(name: str, res: dict) -> str:
    lines = [f"**{name}** ({res['frames']} frames, {res['size'][0]}x{res['size'][1]}, x{res['scale_factor']}, "
             f"ROI {100 * res['roi_fraction']:.1f}% of pixels)", "",
             "| method | BD-rate vs area (ROI-PSNR) | bytes @CRF23 | ROI-PSNR @CRF23 | ROI-SSIM @CRF23 | bg-PSNR @CRF23 "
             "| bg flicker | bg temporal activity | fps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        p = next((q for q in r["rd"] if q["crf"] == 23), r["rd"][len(r["rd"]) // 2])
        bd = r.get("bd_rate_vs_area", float("nan"))
        lines.append(f"| {m} | {bd:+.1f}% | {p['bytes']} | {p['roi_psnr']:.2f} | {p['roi_ssim']:.4f} | "
                     f"{p['bg_psnr']:.2f} | {r['flicker_bg']:.2f} | {r['temporal_activity_bg']:.2f} | {r['fps']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_rd(results: dict, path: Path):
    """ROI-PSNR against kilobytes, one panel per clip, one curve per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from debug_viz import save_figure
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for m, r in res["methods"].items():
            ax.plot([p["bytes"] / 1000 for p in r["rd"]], [p["roi_psnr"] for p in r["rd"]], marker="o",
                    label=f"{m} ({r.get('bd_rate_vs_area', float('nan')):+.0f}%)", lw=2.2 if m == "model" else 1.2)
        ax.set_xscale("log"), ax.set_xlabel("x264 kilobytes (log)"), ax.set_ylabel("ROI-PSNR (dB)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{name} (x{res['scale_factor']})"), ax.grid(alpha=0.3, which="both"), ax.legend(fontsize=7)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- CLI


def load_clip_and_masks(path: Path, masks_dir, roi_source, seg_model_path, s, max_frames, fps=None):
    """Frames (cropped to multiples of s) and the masks every method will share."""
    from roi_sources import make_roi_source
    reader = FrameReader(path, fps=fps)
    names = [f.name for f in reader.files] if reader.files else None
    source, used = make_roi_source("masks" if masks_dir else roi_source, seg_model_path=seg_model_path,
                                   masks_dir=masks_dir, frame_names=names)
    frames, masks = [], []
    for f in reader:
        f = crop_to_multiple(f, s)
        frames.append(f)
        masks.append((source.mask(f) > 0.5).astype(np.uint8))
        if len(frames) == max_frames:
            break
    return frames, masks, used, reader.info.fps


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="clip: folder of frames or video file")
    p.add_argument("--suite", action="store_true", help="evaluate the held-out clips of demo_data.evaluation_clips")
    p.add_argument("--masks_dir", help="ground-truth ROI masks named like the frames (else --roi_source)")
    p.add_argument("--roi_source", default="auto", choices=["auto", "yolo", "motion"])
    p.add_argument("--seg_model_path", default="models/yolov8n-seg.pt")
    p.add_argument("--checkpoint_path", help="model checkpoint (default models/roi_downsampler_x{s}.pth)")
    p.add_argument("--scale_factor", type=int, default=2, choices=[2, 4])
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    p.add_argument("--background_strength", type=float, default=1.0,
                   help="as in inference.py: scale the model's background simplification and hold (0-1)")
    p.add_argument("--crfs", default=",".join(map(str, DEFAULT_CRFS)))
    p.add_argument("--preset", default="medium", help="x264 preset used for the measurement")
    p.add_argument("--max_frames", type=int, default=48)
    p.add_argument("--output_dir", default="output/eval")
    p.add_argument("--threads", type=int, default=None)
    return p


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv), "nothing was written")


def run(args) -> int:
    import demo_data
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = set(methods) - set(ALL_METHODS)
    if bad:
        raise UserError(f"--methods: unknown {', '.join(sorted(bad))}; choose from {', '.join(ALL_METHODS)}")
    try:
        crfs = [int(c) for c in args.crfs.split(",")]
    except ValueError:
        raise UserError(f"--crfs {args.crfs}: expected comma-separated integers like 18,23,28") from None
    model = None
    if "model" in methods:
        ckpt = args.checkpoint_path or checkpoint.default_path(args.scale_factor)
        model, _ = checkpoint.load_model(ckpt, expected_scale=args.scale_factor)
        model.set_background_strength(args.background_strength)
    if args.suite:
        clips = demo_data.evaluation_clips()
        jobs = [(n, p, p.parent / f"{n}_masks" if (p.parent / f"{n}_masks").is_dir() else None) for n, p in clips.items()]
    elif args.input:
        jobs = [(Path(args.input).stem, Path(args.input), args.masks_dir)]
    else:
        raise UserError("pass --input CLIP (frames folder or video) or --suite")
    out_dir = Path(args.output_dir)
    results, tables = {}, []
    for name, path, masks_dir in jobs:
        frames, masks, used, fps = load_clip_and_masks(path, masks_dir, args.roi_source, args.seg_model_path,
                                                       args.scale_factor, args.max_frames)
        res = evaluate_clip(frames, masks, methods, args.scale_factor, crfs, fps, model, args.preset, name)
        res["roi_source"] = "ground truth" if masks_dir else used
        results[name] = res
        tables.append(markdown_table(name, res) + f"\nROI masks: {res['roi_source']}\n")
        print(tables[-1])
    atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out_dir / "results.md", "\n".join(tables).encode())
    plot_rd(results, out_dir / "rd_curves.png")
    print(f"wrote {out_dir}/results.json, results.md, rd_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
