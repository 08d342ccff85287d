"""Rate-distortion evaluation of downscalers after a real encoder (x264), as the field reports it.

    python evaluate.py --suite --scale_factor 2 --output_dir output/eval_x2      # the README's tables
    python evaluate.py --input clip.mp4 --roi_source yolo --gt_masks clip_masks --output_dir output/eval/clip

What a method sees is not what the score uses. The methods get the ROI masks of --roi_source
(the same flags and code path as inference: a real detector misses and mis-shapes objects);
the score uses --gt_masks (human annotations). Without --gt_masks the methods' own masks are
the score ("oracle" mode, which hides the detector's misses) and the report says so.

Every output is encoded with libx264 (the product's preset, one thread) at each CRF and decoded; then:
bytes (H.264 payload); ROI-PSNR / ROI-SSIM inside the ground truth and background PSNR / SSIM
outside it, against the area-downscaled reference; detection F1 -- a COCO detector on the decoded
output upscaled back to the input size, matched against its detections on the original frames
(same class, IoU >= 0.5). BD-rate (bytes vs ROI-PSNR, `bjontegaard`, Akima) against area only
where the two PSNR ranges share >= 1 dB, else "n/a (no overlap)". Bytes at equal detection F1:
what each method needs to reach area's F1 at CRF 23.

Methods: model, area, area+roi_qp (area downscale encoded with x264 ROI quantiser offsets on the
macroblocks of the same masks; the best of qoffset -0.1/-0.2/-0.3 per clip is the anchor it
reports), still_plate (a ceiling, not a product: area's objects over the whole clip's temporal
median, the background at --background_crf -- what a perfect still background plate could save,
knowing the future), bicubic, lanczos, blur_heuristic. The clip is held in memory (--max_frames).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the heavy imports: Ctrl-C while they load is one line
    from errors import quiet_interrupts
    quiet_interrupts()

import argparse
import dataclasses
import json
import resource
import shlex
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import engine
import metrics
import paths
import rd_control
from errors import UserError, run_cli, warn
from rd_control import add_encoder_args, encoder_options
from roi_sources import RoiOptions, add_roi_args, load_yolo, make_roi_source, roi_options
from video_io import (FrameReader, area_downscale, atomic_write_bytes, check_apart, crop_to_multiple, quant_regions,
                      roi_rectangles, temporal_median)

DEFAULT_CRFS = (18, 23, 28, 33, 38)
ALL_METHODS = ("model", "network", "area", "area+roi_qp", "still_plate", "bicubic", "lanczos", "blur_heuristic")
ROI_QOFFSETS = (-0.1, -0.2, -0.3)
MODES = ("end_to_end", "weak_detector", "oracle")  # masks in: the float .pt at 640, the int8 ONNX at 320, the truth


# ----------------------------------------------------------------------------- methods


def blur_heuristic(frames, masks, s, sigma: float = 2.0, feather: int = 7):
    """Strong hand-made baseline: area downscale, Gaussian-blurred background, the same masks
    max-pooled to output size, dilated and feathered."""
    out = []
    for f, m in zip(frames, masks):
        small = area_downscale(f, s)
        core = metrics.block_max(m, s).astype(np.float32)  # every ROI pixel stays sharp; the feather goes outward
        mk = np.maximum(core, cv2.GaussianBlur(cv2.dilate(core, np.ones((3, 3), np.uint8)), (feather, feather), 0))
        blurred = cv2.GaussianBlur(small, (0, 0), sigma).astype(np.float32)
        out.append((small * mk[..., None] + blurred * (1 - mk[..., None])).round().astype(np.uint8))
    return out


def still_plate(frames, masks, s, grow: int = 5):
    """The ceiling of any still-background treatment: area downscaling inside the masks (grown by
    ``grow`` output pixels), the clip's temporal median of area downscaling everywhere else."""
    area = metrics.resize_all(frames, s)
    plate = temporal_median(area)
    kernel = np.ones((grow, grow), np.uint8)
    return [np.where(cv2.dilate(metrics.block_max(m, s).astype(np.uint8), kernel)[..., None] > 0, a, plate)
            for a, m in zip(area, masks)]


def downscale(method, frames, masks, s, model=None):
    if method in ("model", "network"):
        return engine.downsample(model, frames, masks)
    if method == "blur_heuristic":
        return blur_heuristic(frames, masks, s)
    if method == "still_plate":
        return still_plate(frames, masks, s)
    interp = {"area": cv2.INTER_AREA, "area+roi_qp": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC,
              "lanczos": cv2.INTER_LANCZOS4}[method]
    return metrics.resize_all(frames, s, interp)


def encoder_rois(masks, s):
    """The x264 ROI rectangles of each frame's mask at output resolution (macroblock grid)."""
    return [roi_rectangles(metrics.block_max(m, s)) for m in masks]


# ----------------------------------------------------------------------------- detection


class Detector:
    """A COCO detector (Ultralytics .pt or exported .onnx) as the analytics user runs it."""

    def __init__(self, path: str):
        self.model = load_yolo(path, task="detect", flag="--detector_path")
        self.imgsz = getattr(self.model, "fixed_imgsz", None) or 640

    def __call__(self, frame: np.ndarray) -> list:
        from ultralytics.utils import LOGGER
        level = LOGGER.level
        LOGGER.setLevel("WARNING")
        try:
            r = self.model.predict(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), imgsz=self.imgsz, conf=0.25, verbose=False)[0]
        finally:
            LOGGER.setLevel(level)
        return [(int(c), *map(float, b), float(p)) for c, b, p in
                zip(r.boxes.cls.tolist(), r.boxes.xyxy.tolist(), r.boxes.conf.tolist())]


def detection_counts(detector, decoded, reference_dets, size, every: int):
    """Pooled (tp, fp, fn) of the detector on decoded frames upscaled to the input size."""
    tp = fp = fn = 0
    for t in range(0, len(decoded), every):
        up = cv2.resize(decoded[t], size, interpolation=cv2.INTER_CUBIC)
        a, b, c = metrics.detection_f1(reference_dets[t // every], detector(up))
        tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn


# ----------------------------------------------------------------------------- evaluation


def measure_point(out, ref, roi, crf, fps, preset, regions=None, detector=None, ref_dets=None,
                  size=None, det_every=4, still=None) -> dict:
    """One output at one CRF: bytes, quality inside / outside the scored ROI, detection F1, the
    longest ghost; with ``still`` (a static camera's temporal median) the background against it."""
    size_bytes, decoded = metrics.encode_h264_bytes(out, fps, crf, preset, regions=regions)
    d = np.stack(decoded)
    point = {"crf": crf, "bytes": size_bytes, "roi_psnr": metrics.masked_psnr(d, ref, roi),
             "roi_ssim": metrics.masked_ssim(d, ref, roi[..., 0]), "bg_psnr": metrics.masked_psnr(d, ref, ~roi),
             "bg_ssim": metrics.masked_ssim(d, ref, ~roi[..., 0]), "ghost_s": metrics.longest_ghost(d, ref, fps)}
    if still is not None:
        point["bg_psnr_still"] = metrics.masked_psnr(d, np.broadcast_to(still, d.shape), ~roi)
    if detector is not None:
        tp, fp, fn = detection_counts(detector, d, ref_dets, size, det_every)
        point.update(det_tp=tp, det_fp=fp, det_fn=fn, det_f1=metrics.f1_score(tp, fp, fn))
    return point


def at_crf(enc: rd_control.EncoderOptions, crf: int) -> rd_control.EncoderOptions:
    """The encoder options at another --crf, the background the same number of steps coarser."""
    return dataclasses.replace(enc, crf=crf, background_crf=min(51, crf + enc.max_delta))


def model_points(frames, masks, s, model, crfs, fps, ref, roi, enc: rd_control.EncoderOptions, name, **common):
    """The model as inference writes video.mp4: network output, then per segment the closed loop's
    choice of background and background CRF at each CRF."""
    t = time.perf_counter()
    engine.set_closed_loop(model, enc.rd_control)  # as inference runs it
    try:
        images, softs = engine.downsample(model, frames, masks, with_masks=True)
    finally:
        engine.set_closed_loop(model, False)  # the "network" method: the network alone, its gate deciding
    seconds = time.perf_counter() - t
    area = metrics.resize_all(frames, s)
    sources = {"area": area, "model": images}
    points, chosen = [], {}
    for crf in tqdm(crfs, desc=f"{name}: model (closed loop)", unit="crf", leave=False):
        decisions, out, regions = rd_control.plan(sources, softs, at_crf(enc, crf), fps)
        p = measure_point(out, ref, roi, crf, fps, enc.preset, regions, **common)
        p["choices"] = [d.choice.name for d in decisions]
        p["trial_seconds"] = sum(d.seconds for d in decisions)
        points.append(p)
        chosen[crf] = out
    return points, chosen, seconds


def evaluate_clip(frames, masks, methods, s, crfs=DEFAULT_CRFS, fps=25.0, model=None, name="clip",
                  gt_masks=None, detector=None, det_every: int = 4, enc=None, static: bool = False):
    """All metrics for every method on one clip. frames: RGB uint8; masks: what the methods see
    (uint8 0/1); gt_masks: what the score uses (None: the methods' masks, oracle mode); static: a
    static camera, whose background is also scored against its temporal median."""
    scored = gt_masks if gt_masks is not None else masks
    ref = np.stack(metrics.resize_all(frames, s))
    roi = metrics.roi_at_output(scored, s)
    if not roi.any():
        raise UserError(f"{name}: the scored ROI masks are empty on every frame; ROI metrics need objects "
                        f"(check --gt_masks / --roi_source)")
    size = frames[0].shape[1::-1]
    ref_dets = [detector(frames[t]) for t in range(0, len(frames), det_every)] if detector else None
    common = dict(detector=detector, ref_dets=ref_dets, size=size, det_every=det_every,
                  still=temporal_median(ref) if static else None)
    results = {}
    enc = enc or rd_control.EncoderOptions()
    preset = enc.preset
    for method in methods:
        if method == "still_plate" and not static:  # a temporal median is a background only for a still camera
            continue
        if method == "model":
            rd_points, chosen, seconds = model_points(frames, masks, s, model, crfs, fps, ref, roi, enc,
                                                      name, **common)
            out = chosen[23] if 23 in chosen else chosen[crfs[len(crfs) // 2]]
        else:
            t = time.perf_counter()
            out = downscale(method, frames, masks, s, model)
            seconds = time.perf_counter() - t
        v = np.stack(out)
        r = {"fps": len(out) / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "flicker_bg": metrics.flicker(v, ref, ~roi), "flicker_roi": metrics.flicker(v, ref, roi),
             "temporal_activity_bg": float(np.abs(np.diff(v.astype(np.float32), axis=0))[~roi[1:]].mean())}
        if method == "area+roi_qp":  # the practitioners' anchor: the best offset on this clip
            rois = encoder_rois(masks, s)
            variants = {}
            for q in ROI_QOFFSETS:
                regions = [[(r, q) for r in rects] for rects in rois]
                variants[q] = [measure_point(out, ref, roi, crf, fps, preset, regions, **common)
                               for crf in tqdm(crfs, desc=f"{name}: {method} {q}", unit="crf", leave=False)]
            area = results.get("area") or {"rd": [measure_point(metrics.resize_all(frames, s), ref, roi, c, fps,
                                                                preset) for c in crfs]}
            bds = {q: metrics.bd_rate(*curve(area["rd"]), *curve(rd)) for q, rd in variants.items()}
            best = min(bds, key=lambda q: bds[q] if np.isfinite(bds[q]) else np.inf)
            r.update(rd=variants[best], qoffset=best, qoffset_bd_rates={str(q): v for q, v in bds.items()})
        elif method == "model":
            r["rd"] = rd_points
        elif method == "still_plate":  # the background as coarse as the product's floor
            h, w = out[0].shape[:2]
            rois = encoder_rois(masks, s)
            r["rd"] = [measure_point(out, ref, roi, crf, fps, preset,
                                     [quant_regions(rects, 0, enc.max_delta / 51, w, h) for rects in rois], **common)
                       for crf in tqdm(crfs, desc=f"{name}: {method}", unit="crf", leave=False)]
        else:
            r["rd"] = [measure_point(out, ref, roi, crf, fps, preset, **common)
                       for crf in tqdm(crfs, desc=f"{name}: {method}", unit="crf", leave=False)]
        results[method] = r
    if "area" in results:
        anchor = results["area"]["rd"]
        a23 = point_at(anchor, 23)
        for method, r in results.items():
            r["bd_rate_vs_area"] = metrics.bd_rate(*curve(anchor), *curve(r["rd"]))
            r["psnr_range"] = [min(p["roi_psnr"] for p in r["rd"]), max(p["roi_psnr"] for p in r["rd"])]
            if detector is not None:
                r["f1_at_area_bytes"] = metrics.quality_at(a23["bytes"], [p["bytes"] for p in r["rd"]],
                                                           [p["det_f1"] for p in r["rd"]])
                r["bytes_at_area_f1"] = metrics.bytes_at(a23["det_f1"], [p["bytes"] for p in r["rd"]],
                                                         [p["det_f1"] for p in r["rd"]])
    return {"frames": len(frames), "size": list(size), "roi_fraction": float(roi.mean()), "scale_factor": s,
            "crfs": list(crfs), "methods": results, "detector": detector is not None}


def curve(rd):
    return [p["bytes"] for p in rd], [p["roi_psnr"] for p in rd]


def point_at(rd, crf):
    return next((p for p in rd if p["crf"] == crf), rd[len(rd) // 2])


# ----------------------------------------------------------------------------- reporting


def markdown_table(name: str, res: dict) -> str:
    lines = [f"**{name}** ({res['frames']} frames, {res['size'][0]}x{res['size'][1]}, x{res['scale_factor']}, "
             f"scored ROI {100 * res['roi_fraction']:.1f}% of pixels; methods' masks: {res['roi_source']}"
             + (f" (IoU {res['mask_iou_vs_gt']:.2f} with the score's masks)" if "mask_iou_vs_gt" in res else "") + "; "
             f"score: {res['score_masks']})", "",
             "| method | BD-rate vs area (ROI-PSNR) | bytes @CRF23 | ROI-PSNR @23 | ROI-SSIM @23 | bg-PSNR @23 "
             "| bg-SSIM @23 | det F1 @23 | F1 at area's bytes@23 | bytes at area's F1@23 | bg flicker | fps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    anchor = res["methods"].get("area")
    for m, r in res["methods"].items():
        p = point_at(r["rd"], 23)
        label = f"{m} (q {r['qoffset']:+.1f})" if "qoffset" in r else m
        bd = metrics.report_bd(r.get("bd_rate_vs_area", float("nan")),
                               curve(anchor["rd"])[1] if anchor else [0], curve(r["rd"])[1])
        f1 = f"{p['det_f1']:.2f}" if "det_f1" in p else "-"
        at = r.get("bytes_at_area_f1", float("nan"))
        f1_at = r.get("f1_at_area_bytes", float("nan"))
        lines.append(f"| {label} | {bd} | {p['bytes']} | {p['roi_psnr']:.2f} | {p['roi_ssim']:.4f} | "
                     f"{p['bg_psnr']:.2f} | {p['bg_ssim']:.4f} | {f1} | {'n/a' if not np.isfinite(f1_at) else f'{f1_at:.2f}'} | "
                     f"{'n/a' if not np.isfinite(at) else round(at)} | "
                     f"{r['flicker_bg']:.2f} | {r['fps']:.0f} |")
    return "\n".join(lines) + "\n"


def same_crf_table(res: dict) -> str:
    """video.mp4 (the model as inference writes it) against area downscaling at the same CRF: what a
    user who keeps their CRF gets."""
    model, area = res["methods"].get("model"), res["methods"].get("area")
    if not model or not area:
        return ""
    lines = ["| CRF | video.mp4 bytes | area bytes | bytes vs area | ROI-PSNR video / area | bg-PSNR video / area "
             "| det F1 video / area | segments chose |", "|---|---|---|---|---|---|---|---|"]
    for p in model["rd"]:
        a = point_at(area["rd"], p["crf"])
        f1 = f"{p['det_f1']:.2f} / {a['det_f1']:.2f}" if "det_f1" in p else "-"
        lines.append(f"| {p['crf']} | {p['bytes']} | {a['bytes']} | {100 * (p['bytes'] / a['bytes'] - 1):+.1f}% | "
                     f"{p['roi_psnr']:.2f} / {a['roi_psnr']:.2f} | {p['bg_psnr']:.2f} / {a['bg_psnr']:.2f} | {f1} | "
                     f"{', '.join(p.get('choices', []))} |")
    return "\n".join(lines) + "\n"


SUMMARY_METHODS = ("model", "network", "area+roi_qp", "still_plate", "blur_heuristic", "area")


def summary_table(results: dict) -> str:
    """One row per clip: what video.mp4 saves against area at CRF 23 and its object quality beside
    area's; BD-rate vs area of the methods that matter most; background PSNR and detection F1 at
    CRF 23; and per group and mode the medians over the clips (how many in brackets)."""
    methods = [m for m in SUMMARY_METHODS if any(m in r["methods"] for r in results.values())]
    head = ["clip", "masks in (IoU)", "video.mp4 vs area @23: bytes", "ROI-PSNR", "bg-PSNR"] + \
           [f"{m} BD" for m in methods if m != "area"] + [f"F1@23 {m}" for m in methods] + \
           ["bg vs temporal median @23", "longest ghost @23"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    columns = {}  # (group, mode) -> column index -> values
    for name, res in results.items():
        key = (res.get("group", ""), res.get("mode", ""))
        iou = f" ({res['mask_iou_vs_gt']:.2f})" if "mask_iou_vs_gt" in res else ""
        row, values = [name, f"{res['roi_source']}{iou}"], []
        if "model" in res["methods"] and "area" in res["methods"]:
            p, a = point_at(res["methods"]["model"]["rd"], 23), point_at(res["methods"]["area"]["rd"], 23)
            values += [100 * (p["bytes"] / a["bytes"] - 1), p["roi_psnr"] - a["roi_psnr"], p["bg_psnr"] - a["bg_psnr"]]
            row += [f"{values[0]:+.1f}%", f"{p['roi_psnr']:.2f} vs {a['roi_psnr']:.2f}",
                    f"{p['bg_psnr']:.1f} vs {a['bg_psnr']:.1f}"]
        else:
            values += [float("nan")] * 3
            row += ["-"] * 3
        for m in methods:
            if m != "area":
                r = res["methods"].get(m)
                v = r.get("bd_rate_vs_area", float("nan")) if r else float("nan")
                values.append(v)
                row.append("-" if r is None else ("n/a" if not np.isfinite(v) else f"{v:+.1f}%"))
        for m in methods:
            p = point_at(res["methods"][m]["rd"], 23) if m in res["methods"] else {}
            row.append(f"{p['det_f1']:.2f}" if "det_f1" in p else "-")
        row += static_cells(res)
        for i, v in enumerate(values):
            columns.setdefault(key, {}).setdefault(i, []).append(v)
        lines.append("| " + " | ".join(row) + " |")
    for (group, mode), cols in columns.items():  # medians per group and mode: never mixed
        cells = []
        for i, vals in sorted(cols.items()):
            v = [x for x in vals if np.isfinite(x)]
            unit = " dB" if i in (1, 2) else "%"
            cells.append(f"{np.median(v):+.1f}{unit} ({len(v)})" if v else "n/a")
        label = f"**median, {group} {mode}**".replace("  ", " ")
        lines.append("| " + " | ".join([label, ""] + cells + [""] * (len(head) - 2 - len(cells))) + " |")
    return "\n".join(lines) + "\n"


def static_cells(res: dict) -> list[str]:
    """video.mp4 / area at CRF 23: background PSNR against the temporal median (static cameras:
    what a still background is) and the longest ghost in seconds (metrics.longest_ghost)."""
    if "model" not in res["methods"] or "area" not in res["methods"]:
        return ["-", "-"]
    p, a = point_at(res["methods"]["model"]["rd"], 23), point_at(res["methods"]["area"]["rd"], 23)
    still = f"{p['bg_psnr_still']:.1f} vs {a['bg_psnr_still']:.1f}" if "bg_psnr_still" in p else "-"
    return [still, f"{p.get('ghost_s', float('nan')):.1f} s vs {a.get('ghost_s', float('nan')):.1f} s"]


def plot_rd(results: dict, path: Path):
    """Per clip: ROI-PSNR, background PSNR and detection F1 against kilobytes, one curve per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from debug_viz import save_figure
    rows = [("roi_psnr", "ROI-PSNR (dB)"), ("bg_psnr", "background PSNR (dB)"), ("det_f1", "detection F1")]
    n = len(results)
    fig, axes = plt.subplots(3, n, figsize=(4.2 * n, 10), squeeze=False)
    for col, (name, res) in enumerate(results.items()):
        for row, (key, label) in enumerate(rows):
            ax = axes[row][col]
            for m, r in res["methods"].items():
                if key not in r["rd"][0]:
                    continue
                ax.plot([p["bytes"] / 1000 for p in r["rd"]], [p[key] for p in r["rd"]], marker="o", ms=3,
                        label=m, lw=2.2 if m == "model" else 1.2)
            ax.set_xscale("log"), ax.set_xlabel("x264 kilobytes (log)"), ax.set_ylabel(label)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(f"{name} (x{res['scale_factor']}, {res['mode']})", fontsize=9)
                ax.legend(fontsize=6)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- CLI


def load_clip(path: Path, s: int, max_frames: int, fps=None):
    """Frames (cropped to multiples of s), their file names, and the frame rate."""
    reader = FrameReader(path, fps=fps)
    frames, names = [], []
    for f in reader:
        frames.append(crop_to_multiple(f, s))
        names.append(reader.last_name)
        if len(frames) == max_frames:
            break
    return frames, names, reader.info.fps


def clip_masks(frames, names, opts: RoiOptions, yolo_model=None):
    """The masks of one clip from an ROI source (binary uint8), and the name of the source used."""
    source, used = make_roi_source(opts, frame_names=names if names[0] else None, yolo_model=yolo_model)
    return [(source.mask(f, n) > 0.5).astype(np.uint8) for f, n in zip(frames, names)], used


DERIVED = "derived: COCO segmenter (all classes) + difference from the temporal median"


def derived_masks(frames, names, segmenter) -> list[np.ndarray]:
    """Score masks for a static-camera clip without annotations: every object the float COCO
    segmenter finds (any class) united with what moves (metrics.moving_masks)."""
    found = metrics.moving_masks(frames)
    if segmenter:
        opts = RoiOptions(roi_source="yolo", seg_model_path=segmenter, roi_classes="all", roi_motion="off")
        seg, _ = clip_masks(frames, names, opts)
        found = [np.maximum(a, b) for a, b in zip(found, seg)]
    return found


def suite_jobs() -> tuple[list, list[str]]:
    """(name, clip, ground-truth masks or None, group) of the suite, and what is missing. Groups:
    "moving" (DAVIS-2016 validation and the repo's real clips) and "static" (static cameras)."""
    import demo_data
    jobs, missing = [], []
    if paths.DAVIS.is_dir():
        for seq in paths.DAVIS_VAL:
            jobs.append((seq, paths.DAVIS / "JPEGImages" / "480p" / seq, paths.DAVIS / "Annotations" / "480p" / seq,
                         "moving"))
    else:
        missing.append(f"DAVIS-2016 ({paths.DAVIS}) not found: the 4 DAVIS validation clips are left out")
    for name, path in demo_data.evaluation_clips().items():
        gt = path.parent / f"{name}_masks"
        jobs.append((name, path, gt if gt.is_dir() else None, "static" if name.startswith("static") else "moving"))
    if paths.STATIC.is_dir():
        for clip in sorted(paths.STATIC.glob("*.mp4")):
            jobs.append((clip.stem, clip, None, "static"))
    else:
        missing.append(f"{paths.STATIC} not found: the static-camera clips are left out")
    return jobs, missing


def suite_segmenters(seg_path: str) -> tuple[dict, list[str]]:
    """Mode -> segmenter the methods' masks come from (None: the annotation, or motion)."""
    pt = next((p for p in (seg_path, str(paths.SHARED_SEG_PT)) if Path(p).is_file()), None)
    onnx = str(paths.SHARED_SEG_ONNX) if paths.SHARED_SEG_ONNX.is_file() else None
    missing = [] if pt else ["no float YOLO segmenter (models/yolov8n-seg.pt or ../shared): "
                             "end-to-end masks come from motion"]
    if not onnx:
        missing.append(f"{paths.SHARED_SEG_ONNX} not found: the weak-detector rows are left out")
    return {"end_to_end": pt, "weak_detector": onnx, "oracle": None}, missing


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="clip: folder of frames or video file")
    p.add_argument("--suite", action="store_true",
                   help="the 4 DAVIS validation clips (../shared) + the repo's clips, end to end and as oracle")
    p.add_argument("--gt_masks", help="human masks named like the frames: what the score uses (else oracle mode)")
    add_roi_args(p, default_source="auto")
    p.add_argument("--detector_path", default=None,
                   help=f"COCO detector for detection F1 (.pt/.onnx; default {paths.SHARED_DET_PT} when present; "
                        f"'none' to skip)")
    p.add_argument("--det_every", type=int, default=4, help="run the detector on every Nth frame")
    p.add_argument("--checkpoint_path", help="model checkpoint (default models/roi_downsampler_x{s}.pth)")
    p.add_argument("--scale_factor", type=int, default=2, choices=[2, 4])
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    engine.add_model_args(p)  # as in inference.py
    add_encoder_args(p)  # as in inference.py; at each of --crfs the background stays as many steps coarser
    p.add_argument("--crfs", default=",".join(map(str, DEFAULT_CRFS)))
    p.add_argument("--max_frames", type=int, default=48)
    p.add_argument("--static_frames", type=int, default=250,
                   help="frames of each static-camera clip of the suite (objects pass, stop and leave: longer clips)")
    p.add_argument("--modes", default=",".join(MODES),
                   help="with --suite, comma-separated: end_to_end (the float .pt's masks in), weak_detector "
                        "(the int8 ONNX's), oracle (the annotation's)")
    p.add_argument("--write_docs", action="store_true",
                   help="with --suite: also write docs/results_x{s}.md and docs/rd_x{s}.png (the README links them)")
    p.add_argument("--clips", default="", help="with --suite: comma-separated subset of its clips (default: all)")
    p.add_argument("--output_dir", default="output/eval")
    p.add_argument("--threads", type=int, default=None)
    return p


def run_signature(args, enc, crfs, methods, masks_from: str) -> str:
    """What a clip's result depends on: a result stored under OUTPUT_DIR/clips/ with the same
    signature is reused, so an interrupted --suite continues where it stopped."""
    import hashlib
    ckpt = Path(args.checkpoint_path or checkpoint.default_path(args.scale_factor))
    stamp = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
    code = hashlib.sha1(b"".join((paths.REPO / f).read_bytes() for f in (
        "evaluate.py", "rd_control.py", "roi_downsampler.py", "roi_sources.py", "video_io.py", "metrics.py",
        "engine.py"))).hexdigest()
    return json.dumps([code, str(ckpt), stamp, args.scale_factor, crfs, methods, dataclasses.asdict(enc), args.max_frames,
                       args.static_frames, args.det_every, args.detector_path, args.background_strength, args.background_quality,
                       masks_from, {k: getattr(args, k) for k in RoiOptions.__dataclass_fields__}],
                      sort_keys=True, default=str)


def parse_crfs(text: str) -> list[int]:
    try:
        crfs = [int(c) for c in text.split(",")]
    except ValueError:
        raise UserError(f"--crfs {text}: expected comma-separated integers like 18,23,28") from None
    if len(crfs) < 4 or any(not 0 <= c <= 51 for c in crfs) or len(set(crfs)) != len(crfs):
        raise UserError(f"--crfs {text}: give at least 4 different CRFs in 0..51 (BD-rate needs 4 points)")
    return sorted(crfs)


def load_detector(path_flag):
    if path_flag == "none":
        return None
    path = path_flag or (str(paths.SHARED_DET_PT) if paths.SHARED_DET_PT.is_file() else None)
    if path is None:
        warn("no COCO detector (pass --detector_path, .pt or .onnx): detection F1 is left out")
        return None
    return Detector(path)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = set(methods) - set(ALL_METHODS)
    if bad:
        raise UserError(f"--methods: unknown {', '.join(sorted(bad))}; choose from {', '.join(ALL_METHODS)}")
    crfs = parse_crfs(args.crfs)
    if min(args.det_every, args.max_frames, args.static_frames) < 1:
        raise UserError(f"--det_every, --max_frames and --static_frames must be >= 1, got {args.det_every}, "
                        f"{args.max_frames}, {args.static_frames}")
    model = None
    if "model" in methods:
        ckpt = args.checkpoint_path or checkpoint.default_path(args.scale_factor)
        model, _ = checkpoint.load_model(ckpt, expected_scale=args.scale_factor)
        # closed_loop=False: the "network" method is the network alone, its gate deciding;
        # model_points turns the gate off around the closed loop, as inference does
        engine.apply_knobs(model, engine.model_knobs(args), closed_loop=False)
    enc = encoder_options(args)
    detector = load_detector(args.detector_path)
    opts = roi_options(args)
    notes, segmenters = [], {}
    if args.suite:
        jobs, notes = suite_jobs()
        segmenters, more = suite_segmenters(opts.seg_model_path)
        notes += more
        modes = [m for m in args.modes.split(",") if m]
        if set(modes) - set(MODES):
            raise UserError(f"--modes: choose from {', '.join(MODES)}")
        wanted = [c for c in args.clips.split(",") if c]
        unknown = set(wanted) - {j[0] for j in jobs}
        if unknown:
            raise UserError(f"--clips: {', '.join(sorted(unknown))} not in the suite ({', '.join(j[0] for j in jobs)})")
        jobs = [j for j in jobs if not wanted or j[0] in wanted]
    elif args.input:
        jobs, modes = [(Path(args.input).stem, Path(args.input), args.gt_masks, "given")], ["given"]
    else:
        raise UserError("pass --input CLIP (frames folder or video) or --suite")
    for n in notes:
        warn(n)
    out_dir = Path(args.output_dir)
    check_apart(out_dir, "--output_dir", {"--input": args.input, "--gt_masks": args.gt_masks,
                                          "--masks_dir": opts.masks_dir, "--checkpoint_path": args.checkpoint_path,
                                          "--detector_path": args.detector_path, "--seg_model_path": opts.seg_model_path,
                                          **{f"suite clip {n}": p for n, p, _, _ in (jobs if args.suite else [])}})
    if args.write_docs and not args.suite:
        raise UserError("--write_docs goes with --suite (docs/ holds the suite's results)")
    results, tables = {}, []
    for name, path, gt_dir, group in jobs:
        frames, names, fps = load_clip(path, args.scale_factor, args.static_frames if group == "static" else args.max_frames)
        gt = clip_masks(frames, names, RoiOptions(roi_source="masks", masks_dir=str(gt_dir)))[0] if gt_dir else None
        score_masks = "human annotation"
        if gt is None and group == "static":
            gt, score_masks = derived_masks(frames, names, segmenters.get("end_to_end")), DERIVED
        for mode in modes:
            if mode == "oracle" and gt is None or mode == "weak_detector" and not segmenters.get(mode):
                continue
            if mode == "oracle":
                masks, used = gt, "derived (oracle)" if score_masks == DERIVED else "ground truth (oracle)"
            elif mode in segmenters:
                seg = segmenters[mode]
                o = RoiOptions(**{**opts.__dict__, "roi_source": "yolo" if seg else "motion",
                                  "seg_model_path": seg or opts.seg_model_path, "masks_dir": None})
                masks, used = clip_masks(frames, names, o)
                used = f"{used} {Path(seg).name}" if seg else used
            else:
                masks, used = clip_masks(frames, names, opts)
            key = f"{name} [{mode}]" if args.suite else name
            if args.suite and gt is None and not any(m.any() for m in masks):
                notes.append(f"{key}: no object of --roi_classes found and no annotation to score: left out")
                warn(notes[-1])
                continue
            done = out_dir / "clips" / f"{key.replace(' ', '_').replace('/', '_')}.json"
            signature = run_signature(args, enc, crfs, methods, used)
            if done.is_file() and json.loads(done.read_text()).get("signature") == signature:
                res = json.loads(done.read_text())["result"]  # measured by an earlier, interrupted run
            else:
                res = evaluate_clip(frames, masks, methods, args.scale_factor, crfs, fps, model, name,
                                    gt_masks=gt, detector=detector, det_every=args.det_every, enc=enc,
                                    static=group == "static")
                if gt is not None and mode != "oracle":
                    res["mask_iou_vs_gt"] = metrics.mask_iou(masks, gt)
                res.update(roi_source=used, group=group,
                           mode=mode if mode != "given" else ("scored on --gt_masks" if gt else "oracle"),
                           score_masks=score_masks if gt is not None else "the methods' own masks (oracle)")
                atomic_write_bytes(done, json.dumps({"signature": signature, "result": res}).encode())
            results[key] = res
            tables.append(markdown_table(key, res) + "\n" + same_crf_table(res))
            print(tables[-1])
    if not results:
        raise UserError("nothing to evaluate (oracle mode needs ground-truth masks)")
    meta = {"notes": notes, "crfs": crfs, "encoder": dataclasses.asdict(enc), "scale_factor": args.scale_factor,
            "detector": getattr(detector, "imgsz", None) and (args.detector_path or str(paths.SHARED_DET_PT))}
    atomic_write_bytes(out_dir / "results.json", json.dumps({"meta": meta, "clips": results}, indent=2).encode())
    summary = summary_table(results)
    print(summary)
    document = "\n".join(notes + [summary] + tables)
    atomic_write_bytes(out_dir / "results.md", document.encode())
    plot_rd(results, out_dir / "rd_curves.png")
    print(f"wrote {out_dir}/results.json, results.md, rd_curves.png")
    if args.write_docs:
        s = args.scale_factor
        detector = Path(meta["detector"]).name if meta["detector"] else "none"
        header = (f"# Results at x{s}\n\nWritten by `python evaluate.py {shlex.join(sys.argv[1:])}` (x264 "
                  f"{enc.preset}, CRFs {', '.join(map(str, crfs))}, at most {args.max_frames} frames a clip "
                  f"({args.static_frames} of a static camera's), detection F1 with {detector}); do not edit by hand.\n\n")
        atomic_write_bytes(paths.REPO / "docs" / f"results_x{s}.md", (header + document).encode())
        plot_rd(results, paths.REPO / "docs" / f"rd_x{s}.png")
        print(f"wrote docs/results_x{s}.md, docs/rd_x{s}.png")
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv), "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
