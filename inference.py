"""Downsample a video with the ROI downsampler: frames folder / video file / folder of sequences in,
the documented output contract out (see README "Output contract").

    python inference.py --input_dir clip.mp4 --output_dir output/clip --scale_factor 2

Frames stream through read -> ROI mask -> network (temporal state carried) -> write, so memory
stays flat whatever the length of the video.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from roi_downsampler import (PARAM_NAMES, DownsamplerConfig, ROIDownsampler, default_checkpoint, frames_to_tensor,
                             load_model, masks_to_tensor, pick_device, tensor_to_frames)
from roi_sources import DEFAULT_ROI_CLASSES, DEFAULT_SEG_MODEL, make_roi_source
from video_io import (H264Writer, FrameReader, UserError, atomic_write_bytes, crop_to_multiple, frame_name,
                      is_video_file, list_frame_files, plain_warnings, write_png)

REPO = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default=None, help="folder of frames, a video file, or a folder of sequences "
                   "(default: the embedded demo clip)")
    p.add_argument("--output_dir", default="output/demo", help="where frames/, masks/, video.mp4, report.json go")
    p.add_argument("--checkpoint_path", default=None, help="trained .pth (default: models/roi_downsampler_x{s}.pth)")
    p.add_argument("--seg_model_path", default=DEFAULT_SEG_MODEL, help="Ultralytics YOLO segmentation weights")
    p.add_argument("--scale_factor", type=int, default=2, choices=[2, 4], help="downscale factor")
    p.add_argument("--debug", action="store_true", help="write debug/ side-by-sides and a parameter plot")
    p.add_argument("--roi_source", default="auto", choices=["auto", "yolo", "motion", "masks"])
    p.add_argument("--masks_dir", default=None, help="0/255 PNG masks named like the frames (--roi_source masks)")
    p.add_argument("--roi_classes", default=DEFAULT_ROI_CLASSES, help="comma-separated COCO classes, or 'all'")
    p.add_argument("--conf", type=float, default=0.25, help="YOLO confidence threshold")
    p.add_argument("--seg_imgsz", type=int, default=640, help="YOLO inference size")
    p.add_argument("--keyframe_interval", type=int, default=1, help="run YOLO every N frames, flow-warp masks between")
    p.add_argument("--background_strength", type=float, default=1.0,
                   help="scale the learned background simplification and hold: 1 = as trained, 0 = plain area "
                        "background (for moving cameras or jittery ROI masks)")
    p.add_argument("--crf", type=int, default=23, help="x264 CRF of video.mp4 (0-51, lower = better)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, or auto")
    p.add_argument("--batch_size", type=int, default=8, help="frames per network call (the result does not depend on it)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a frames folder (default 25)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    p.add_argument("--skip_bad_frames", action="store_true", help="skip unreadable frames with a warning")
    p.add_argument("--debug_every", type=int, default=1, help="with --debug, write every Nth side-by-side")
    return p


def load_downsampler(args) -> tuple[ROIDownsampler, str]:
    """The trained model, or (only when no path was given and none is shipped) the untrained one,
    which is exactly an area downscaler, with a loud warning."""
    if args.checkpoint_path:
        model, _ = load_model(args.checkpoint_path, expected_scale=args.scale_factor)
        return model, str(args.checkpoint_path)
    path = default_checkpoint(args.scale_factor)
    if path.is_file():
        model, _ = load_model(path, expected_scale=args.scale_factor)
        return model, str(path.relative_to(REPO))
    print(f"WARNING: {path.relative_to(REPO)} not found: using the UNTRAINED network (equal to area "
          f"downscaling); train one with `bash train.sh` or pass --checkpoint_path", file=sys.stderr)
    return ROIDownsampler(DownsamplerConfig(scale_factor=args.scale_factor)).eval(), "untrained"


def find_sequences(input_path: Path) -> list[tuple[str, Path]]:
    """[(output subfolder name, sequence path)]: one sequence, or each of a folder of sequences."""
    if input_path.is_file() or (input_path.is_dir() and list_frame_files(input_path)):
        return [("", input_path)]
    if input_path.is_dir():
        subs = sorted(p for p in input_path.iterdir() if not p.name.startswith(".") and
                      ((p.is_dir() and list_frame_files(p)) or is_video_file(p)))
        if subs:
            return [(p.stem if p.is_file() else p.name, p) for p in subs]
    return [("", input_path)]  # let FrameReader produce the precise error


def check_output_dir(output_dir: Path, input_path: Path) -> None:
    """Outputs never go into a frames folder (or over a video file) that is being read."""
    out, inp = output_dir.resolve(), input_path.resolve()
    if out == inp or (inp.is_dir() and inp in out.parents):
        raise UserError(f"--output_dir {output_dir} is inside the input {input_path}; inputs are never "
                        f"written to, choose another folder (e.g. output/run1)")


@contextmanager
def timed(seconds: dict, stage: str):
    """Add the time spent in the block to seconds[stage] (the report's per-stage frames/s)."""
    t = time.perf_counter()
    yield
    seconds[stage] += time.perf_counter() - t


class BackgroundWriter:
    """Runs write jobs (PNG encoding, x264) in order on one worker thread, so they overlap with
    the network (both release the GIL). The queue is bounded, so memory stays flat; an error in
    the worker is re-raised in the caller at the next submit() or at close()."""

    def __init__(self, max_pending: int = 16):
        self.jobs: queue.Queue = queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.busy_seconds = 0.0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self):
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                t = time.perf_counter()
                try:
                    job()
                except BaseException as e:  # handed to the main thread
                    self.error = e
                self.busy_seconds += time.perf_counter() - t

    def submit(self, job):
        if self.error is not None:
            raise self.error
        self.jobs.put(job)

    def close(self):
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def run_sequence(model, args, seq_path: Path, out_dir: Path, device, roi_factory=None) -> dict:
    """Stream one sequence through the pipeline and write the output contract to out_dir."""
    import debug_viz
    reader = FrameReader(seq_path, fps=args.fps, skip_bad=args.skip_bad_frames)
    s = args.scale_factor
    frame_names = [f.name for f in reader.files] if reader.files else None
    factory = roi_factory or make_roi_source
    source, source_used = factory(args.roi_source, seg_model_path=args.seg_model_path, roi_classes=args.roi_classes,
                                  conf=args.conf, imgsz=args.seg_imgsz, keyframe_interval=args.keyframe_interval,
                                  masks_dir=args.masks_dir, frame_names=frame_names, device=args.device)
    seconds, state, params_log, n = defaultdict(float), None, [], 0
    video = H264Writer(out_dir / "video.mp4", reader.info.fps, args.crf)
    writer = BackgroundWriter()
    chunk_frames, chunk_masks = [], []
    lookahead = model.cfg.gate_lookahead  # the first call gets at least this many frames (prime())

    def write_frame(i, img, soft, frame=None, mask=None):
        write_png(out_dir / "frames" / frame_name(i), img)
        write_png(out_dir / "masks" / frame_name(i), soft)
        video.write(img)
        if frame is not None:
            debug_viz.write_side_by_side(out_dir / "debug" / frame_name(i), frame, mask, soft, img)

    def flush():
        nonlocal state, n, chunk_frames, chunk_masks
        with timed(seconds, "downsample"), torch.no_grad():
            frames = frames_to_tensor(np.stack(chunk_frames))[None].to(device)
            masks = masks_to_tensor(np.stack(chunk_masks))[None].to(device)
            if state is None:  # the background gate looks at the first frames before deciding
                state = model.prime(frames, masks)
            out = model(frames, masks, state)
            state = out.state
            images = list(tensor_to_frames(out.frames[0]))
            softs = list(tensor_to_frames(out.masks[0])[..., 0])
        for t, (img, soft) in enumerate(zip(images, softs)):
            debug = args.debug and n % args.debug_every == 0
            writer.submit(partial(write_frame, n, img, soft, *((chunk_frames[t], chunk_masks[t]) if debug else ())))
            params_log.append(dict(zip(PARAM_NAMES, out.params[0, t].tolist())))
            n += 1
        chunk_frames, chunk_masks = [], []  # new lists: the writer may still hold the old ones

    t_start = time.perf_counter()
    total = reader.info.num_frames or None
    try:
        frames_iter = iter(reader)
        with tqdm(total=total, desc=f"downsampling {seq_path.name}", unit="frame") as bar:
            while True:
                with timed(seconds, "read"):
                    frame = next(frames_iter, None)
                if frame is None:
                    break
                frame = crop_to_multiple(frame, s)
                with timed(seconds, "segment"):
                    mask = source.mask(frame).astype(np.float32)
                chunk_frames.append(frame), chunk_masks.append(mask)
                if len(chunk_frames) >= max(args.batch_size, lookahead if state is None else 0):
                    flush()
                bar.update()
            if chunk_frames:
                flush()
        writer.close()
        with timed(seconds, "write"):
            video_bytes = video.close()
    except BaseException:
        if writer.error is None:
            writer.close()  # let queued frames finish: what is on disk stays consistent
        video.abort()
        raise
    seconds["write"] += writer.busy_seconds
    if n == 0:
        raise UserError(f"{seq_path}: no frame could be read")
    elapsed = time.perf_counter() - t_start
    if args.debug:
        debug_viz.plot_parameters(out_dir / "debug" / "parameters.png", params_log)
    h, w = reader.info.height // s, reader.info.width // s
    return {
        "input": str(seq_path), "frames": n, "input_size": [reader.info.width, reader.info.height],
        "output_size": [w, h], "fps": reader.info.fps, "roi_source": source_used,
        "skipped_frames": reader.skipped, "video_bytes": video_bytes, "crf": args.crf,
        "stage_fps": {k: (n / v if v > 0 else None) for k, v in seconds.items()},
        "overall_fps": n / elapsed, "seconds": elapsed, "parameters": params_log,
    }


def run(args, roi_factory=None) -> list[dict]:
    import demo_data
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if not 0 <= args.crf <= 51:
        raise UserError(f"--crf must be in 0..51, got {args.crf}")
    input_path = Path(args.input_dir) if args.input_dir else demo_data.demo_clip()
    if not input_path.exists():
        raise UserError(f"--input_dir {input_path}: no such file or folder")
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, input_path)
    device = pick_device(args.device)
    model, ckpt_name = load_downsampler(args)
    model.set_background_strength(args.background_strength)
    model.to(device)
    reports = []
    for name, seq in find_sequences(input_path):
        out_dir = output_dir / name if name else output_dir
        try:
            report = run_sequence(model, args, seq, out_dir, device, roi_factory)
        except BaseException:
            if out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # failed before the first frame: leave nothing behind
            raise
        report.update(checkpoint=ckpt_name, scale_factor=args.scale_factor, device=str(device),
                      background_strength=args.background_strength)
        atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
        reports.append(report)
        print(f"wrote {report['frames']} frames {report['output_size'][0]}x{report['output_size'][1]} to {out_dir}/ "
              f"(video.mp4 {report['video_bytes']} bytes, ROI source {report['roi_source']}, "
              f"{report['overall_fps']:.1f} frames/s)")
    return reports


def main(argv=None) -> int:
    plain_warnings()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished frames are on disk; run the same command again to redo", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
