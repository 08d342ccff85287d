"""Downsample a video with the ROI downsampler: frames folder / video file / folder of sequences in,
the documented output contract out (see README "Output contract").

    python inference.py --input_dir clip.mp4 --output_dir output/clip --scale_factor 2

Frames stream through read -> ROI mask -> network (engine.stream, temporal state carried) ->
write, so memory stays flat whatever the length of the video. The result is built in a hidden
sibling folder and moved into place only when every sequence is done: OUTPUT_DIR holds a complete
result or nothing new.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the heavy imports: Ctrl-C while they load is one line
    from errors import quiet_interrupts
    quiet_interrupts()

import argparse
import json
import math
import os
import queue
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

import checkpoint
import engine
from errors import UserError, run_cli, warn
import rd_control
from rd_control import EncoderOptions, add_encoder_args, encoder_options
from roi_downsampler import DownsamplerConfig, ROIDownsampler
from roi_sources import RoiOptions, add_roi_args, make_roi_source, roi_options
from video_io import (FrameReader, H264Writer, ResultFolder, area_downscale, atomic_write_bytes, check_apart,
                      crop_to_multiple, frame_name, is_video_file, list_frame_files, write_png)

REPO = Path(__file__).resolve().parent


@dataclass
class InferenceConfig:
    """Everything a run needs; the CLI flags map onto it one to one (see build_parser)."""
    input_dir: Optional[str] = None       # None: the embedded demo clip
    output_dir: str = "output/demo"
    checkpoint_path: Optional[str] = None  # None: models/roi_downsampler_x{s}.pth
    scale_factor: int = 2
    debug: bool = False
    save_frames: bool = False
    roi: RoiOptions = field(default_factory=RoiOptions)
    knobs: engine.ModelKnobs = field(default_factory=engine.ModelKnobs)
    enc: EncoderOptions = field(default_factory=EncoderOptions)
    compare_area: Optional[bool] = None   # None: on for the embedded demo clip only
    device: str = "auto"
    batch_size: int = 2
    fps: Optional[float] = None
    threads: Optional[int] = None
    skip_bad_frames: bool = False
    debug_every: int = 1
    ray: Optional[str] = None   # a batch of videos on Ray: local, auto or a cluster address (batch.py)


def build_parser() -> argparse.ArgumentParser:
    d = InferenceConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", default=None, help="folder of frames, a video file, or a folder of sequences "
                   "(default: the embedded demo clip)")
    p.add_argument("--output_dir", default=d.output_dir, help="where video.mp4 and report.json go (frames/, masks/, "
                   "debug/ on request); an earlier result there is replaced as a whole, anything else is an error")
    p.add_argument("--checkpoint_path", default=None, help="trained .pth (default: models/roi_downsampler_x{s}.pth)")
    p.add_argument("--scale_factor", type=int, default=d.scale_factor, choices=[2, 4], help="downscale factor")
    p.add_argument("--debug", action="store_true", help="write debug/ side-by-sides and a parameter plot")
    p.add_argument("--save_frames", action="store_true",
                   help="also write every output frame and soft mask as PNG (frames/, masks/; ~20%% slower)")
    add_roi_args(p)
    engine.add_model_args(p)
    add_encoder_args(p)
    p.add_argument("--compare_area", action="store_true", default=None,
                   help="also encode plain area downscaling at --crf and decode both streams, so that the last line "
                        "and report.json compare video.mp4 with it as measured (a second encode and two decodes: "
                        "~8%% more CPU); without it they give the closed loop's estimate from its trials (default: "
                        "on for the embedded demo clip only)")
    p.add_argument("--no_compare_area", dest="compare_area", action="store_false", default=None,
                   help=argparse.SUPPRESS)  # kept for scripts written when the comparison was on by default
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:0, or auto (CUDA when present)")
    p.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="frames per network call (the result does not depend on it)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a frames folder (default 25)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch and ONNX Runtime ops (default: half the cores: reading and the "
                        "detector, the network and the encoder already run side by side; on 2 cores 1 thread "
                        "took 0.95 of the time of 2)")
    p.add_argument("--skip_bad_frames", action="store_true",
                   help="skip unreadable frames (and a truncated video's end) with a warning, recorded in report.json")
    p.add_argument("--debug_every", type=int, default=d.debug_every, help="with --debug, write every Nth side-by-side")
    p.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                   help="a batch: every video or frame folder of --input_dir (a folder, or a .txt of paths) as its own "
                        "Ray task (--threads CPUs each) into OUTPUT_DIR/<name>/, with summary.csv; rerun to resume")
    return p


def config_from_args(args: argparse.Namespace) -> InferenceConfig:
    values = {k: getattr(args, k) for k in InferenceConfig.__dataclass_fields__ if k not in ("roi", "enc", "knobs")}
    return InferenceConfig(roi=roi_options(args), enc=encoder_options(args), knobs=engine.model_knobs(args), **values)


def check_config(cfg: InferenceConfig) -> None:
    """Every flag that could only fail later, checked before anything is read or written."""
    if cfg.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.fps is not None and not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise UserError(f"--fps must be a positive number of frames per second, got {cfg.fps}")
    if cfg.threads is not None and not 1 <= cfg.threads <= 4 * (os.cpu_count() or 1):
        raise UserError(f"--threads must be in 1..{4 * (os.cpu_count() or 1)} (4x this machine's cores), "
                        f"got {cfg.threads}")
    if cfg.debug_every < 1:
        raise UserError(f"--debug_every must be >= 1, got {cfg.debug_every}")
    engine.model_knobs(cfg.knobs)
    rd_control.check(cfg.enc)


def usable_cores() -> int:
    """The cores this process may use (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """Half the cores this process may use: the pipeline's stages run side by side, so threads
    inside each op mostly compete with them."""
    return max(1, usable_cores() // 2)


def load_downsampler(cfg: InferenceConfig) -> tuple[ROIDownsampler, str]:
    """The trained model, or (only when no path was given and none is shipped) the untrained one,
    which is exactly an area downscaler, with a loud warning."""
    if cfg.checkpoint_path:
        model, _ = checkpoint.load_model(cfg.checkpoint_path, expected_scale=cfg.scale_factor)
        return model, str(cfg.checkpoint_path)
    path = checkpoint.default_path(cfg.scale_factor)
    if path.is_file():
        model, _ = checkpoint.load_model(path, expected_scale=cfg.scale_factor)
        return model, str(path.relative_to(REPO))
    warn(f"{path.relative_to(REPO)} not found: using the UNTRAINED network (equal to area downscaling); "
         f"train one with `bash train.sh` or pass --checkpoint_path")
    return ROIDownsampler(DownsamplerConfig(scale_factor=cfg.scale_factor)).eval(), "untrained"


def find_sequences(input_path: Path) -> list[tuple[str, Path]]:
    """[(output subfolder name, sequence path)]: one sequence, or each of a folder of sequences."""
    if input_path.is_file() or (input_path.is_dir() and list_frame_files(input_path)):
        return [("", input_path)]
    if input_path.is_dir():
        subs = sorted(p for p in input_path.iterdir() if not p.name.startswith(".") and
                      ((p.is_dir() and list_frame_files(p)) or is_video_file(p)))
        names = {}
        for p in subs:
            name = p.stem if p.is_file() else p.name
            if name in names:
                raise UserError(f"{names[name]} and {p} would both be written to OUTPUT_DIR/{name}; "
                                f"rename one of them")
            names[name] = p
        if subs:
            return [(name, p) for name, p in names.items()]
    return [("", input_path)]  # let FrameReader produce the precise error


@contextmanager
def timed(seconds: dict, stage: str):
    """Add the time spent in the block to seconds[stage] (the report's per-stage frames/s)."""
    t = time.perf_counter()
    yield
    seconds[stage] += time.perf_counter() - t


class OrderedWorker:
    """Runs write jobs (PNG encoding, x264) in order on one worker thread, so they overlap with
    the network (both release the GIL). The queue is bounded, so memory stays flat; an error in
    the worker is re-raised in the caller at the next submit() or at close()."""

    def __init__(self, max_pending: int = 16):
        self.jobs: queue.Queue = queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.busy_seconds = 0.0
        self.thread = threading.Thread(target=self._work, daemon=True, name="writer")
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


class SequenceWriter:
    """The output contract of one sequence, a decided frame at a time: video.mp4; with
    --compare_area also plain area downscaling at --crf (both decoded as they are written and
    measured against area downscaling); PNG frames and masks on request, debug side-by-sides."""

    def __init__(self, out_dir: Path, fps: float, cfg: InferenceConfig):
        self.out_dir, self.cfg = out_dir, cfg
        enc = cfg.enc
        self.video = H264Writer(out_dir / "video.mp4", fps, enc.crf, enc.preset, measure=cfg.compare_area)
        self.area = H264Writer(out_dir / ".area.mp4", fps, enc.crf, enc.preset, measure=True) \
            if cfg.compare_area else None
        self.regions: list = []   # per frame: x264 quantiser regions

    def write(self, i: int, out, regions, area, soft, debug=None):
        """One frame as decided: the image to encode and its x264 regions; debug: (input, mask) or None."""
        self.regions.append(regions)
        if self.cfg.save_frames:
            write_png(self.out_dir / "frames" / frame_name(i), out)
            write_png(self.out_dir / "masks" / frame_name(i), soft)
        reference = (area, rd_control.roi_of(soft))
        self.video.write(out, regions, reference)
        if self.area is not None:
            self.area.write(area, (), reference)
        if debug is not None:
            import debug_viz
            debug_viz.write_side_by_side(self.out_dir / "debug" / frame_name(i), *debug, soft, out)

    def close(self) -> dict:
        """video.mp4's bytes and, with the comparison, area's, and both qualities as decoded."""
        result = {"video_bytes": self.video.close()}
        if self.area is not None:
            result["area_video_bytes"] = self.area.close()
            (self.out_dir / ".area.mp4").unlink()
            video_q, area_q = self.video.quality(), self.area.quality()
            result.update(bytes_vs_area_pct=100 * (result["video_bytes"] / result["area_video_bytes"] - 1),
                          roi_psnr=video_q["roi_psnr"], bg_psnr=video_q["bg_psnr"],
                          area_roi_psnr=area_q["roi_psnr"], area_bg_psnr=area_q["bg_psnr"])
        return result

    def abort(self):
        self.video.abort()
        if self.area is not None:
            self.area.abort()


def read_frames(reader: FrameReader, source, s: int, seconds: dict, bar, names: list):
    """(frame, mask) pairs: read, crop to a multiple of s, find the ROI; timed per stage. The input
    file name of each output frame is appended to names (frame folders). A source with a
    ``lookahead`` is told of each frame (``announce``) that many frames before its mask is asked
    for: its detector works on a keyframe while the frames before it are made."""
    frames, read = iter(reader), deque()
    depth = getattr(source, "lookahead", 0)
    while True:
        with timed(seconds, "read"):
            frame = next(frames, None)
        if frame is not None:
            frame = crop_to_multiple(frame, s)
            if depth:
                source.announce(frame)
            read.append((frame, reader.last_name))
            if len(read) <= depth:
                continue
        if not read:
            return
        frame, name = read.popleft()
        with timed(seconds, "segment"):
            mask = np.asarray(source.mask(frame, name), dtype=np.float32)  # no copy when float32
        names.append(name)
        bar.update()
        yield frame, mask


def run_sequence(model, cfg: InferenceConfig, seq_path: Path, out_dir: Path, device) -> dict:
    """Stream one sequence: read -> ROI (input thread) -> network -> decide -> write (output thread)."""
    reader = FrameReader(seq_path, fps=cfg.fps, skip_bad=cfg.skip_bad_frames)
    frame_names = [f.name for f in reader.files] if reader.files else None
    source, source_used = make_roi_source(cfg.roi, frame_names=frame_names, device=str(device))
    seconds, params_log, n = defaultdict(float), [], 0
    decider = rd_control.SegmentDecider(cfg.enc, reader.info.fps, total_frames=reader.info.num_frames or None)
    writer, jobs = SequenceWriter(out_dir, reader.info.fps, cfg), OrderedWorker()

    def decide_and_write(decided):
        for frame_out in decided:
            writer.write(*frame_out)
    t_start = time.perf_counter()
    try:
        with tqdm(total=reader.info.num_frames or None, desc=f"downsampling {seq_path.name}", unit="frame") as bar:
            waited, names, first = {}, [], None  # first: (time, frames) of the first output chunk
            frames_in = read_frames(reader, source, cfg.scale_factor, seconds, bar, names)
            ahead = engine.prepared(model, frames_in, device, seconds)  # the network's stateless third
            chunks = engine.stream(model, engine.prefetch(ahead, waited=waited), cfg.batch_size, device)
            while True:
                t = time.perf_counter()
                chunk = next(chunks, None)
                seconds["downsample"] += time.perf_counter() - t  # time waiting for input is subtracted below
                if chunk is None:
                    break
                first = first or (time.perf_counter(), len(chunk.images))
                for img, soft, params, (frame, mask) in zip(chunk.images, chunk.softs, chunk.params, chunk.inputs):
                    debug = cfg.debug and n % cfg.debug_every == 0
                    carried = (frame, mask) if debug else None  # full-resolution frames only travel when needed
                    # the area reference is made on the output thread: the network's thread is the busiest
                    jobs.submit(lambda i=n, f=frame, img=img, soft=soft, carried=carried: decide_and_write(
                        decider.add(i, {"area": area_downscale(f, cfg.scale_factor), "model": img}, soft, carried)))
                    params_log.append(params)
                    n += 1
        jobs.submit(lambda: decide_and_write(decider.flush()))
        jobs.close()
        with timed(seconds, "write"):
            measured = writer.close()
    except BaseException:
        if jobs.error is None:
            jobs.close()
        writer.abort()
        raise
    seconds["downsample"] -= waited.get("input", 0.0)
    seconds["write"] += jobs.busy_seconds
    if n == 0:
        raise UserError(f"{seq_path}: no frame could be read")
    if cfg.debug:
        import debug_viz
        debug_viz.plot_parameters(out_dir / "debug" / "parameters.png", params_log)
    end = time.perf_counter()
    elapsed = end - t_start
    return {
        "input": str(seq_path), "frames": n, "input_size": [reader.info.width, reader.info.height],
        "output_size": [reader.info.width // cfg.scale_factor, reader.info.height // cfg.scale_factor],
        "fps": reader.info.fps, "roi_source": source_used, "skipped_frames": reader.skipped,
        "seg_imgsz": getattr(getattr(source, "segmenter", None), "imgsz", None),
        "seg_runtime": getattr(getattr(source, "segmenter", None), "runtime", None),
        # YOLO's runs: fewer than the keyframes where --skip_quiet_keyframes skipped some
        "detector_runs": getattr(getattr(source, "detector", source), "runs", None),
        "input_frames": names if reader.files else None,  # output frame i was made from input_frames[i]
        **measured, "encoder": asdict(cfg.enc), "background_crf": cfg.enc.crf + cfg.enc.max_delta,
        "x264_regions": [[[list(r), q] for r, q in regs] for regs in writer.regions], **decider.report(),
        "stage_fps": {k: (n / v if v > 0 else None) for k, v in seconds.items()},
        "overall_fps": n / elapsed, "seconds": elapsed, "parameters": params_log,
        # after start-up (the gate's look-ahead, a first chunk's worth of frames): frames/s from the first output on
        "steady_fps": (n - first[1]) / (end - first[0]) if first and n > first[1] else None,
    }


def summary_line(report: dict, out_dir: Path) -> str:
    w, h = report["output_size"]
    crf = report["encoder"]["crf"]
    cmp = ""
    if "area_video_bytes" in report:
        def db(v):
            return "-" if v is None else f"{v:.2f}"
        cmp = (f" vs {report['area_video_bytes']} for plain area downscaling at CRF {crf} "
               f"({report['bytes_vs_area_pct']:+.1f}%); objects {db(report['roi_psnr'])} vs "
               f"{db(report['area_roi_psnr'])} dB, background {db(report['bg_psnr'])} vs "
               f"{db(report['area_bg_psnr'])} dB (PSNR against area downscaling, as decoded)")
    elif report.get("trial_bytes_vs_area_pct") is not None:
        cmp = (f"; {report['trial_bytes_vs_area_pct']:+.1f}% vs plain area downscaling at CRF {crf} as the closed "
               f"loop's trials estimate it, --compare_area measures it")
    return (f"wrote {report['frames']} frames {w}x{h} to {out_dir}/ (video.mp4 {report['video_bytes']} bytes{cmp}; "
            f"ROI source {report['roi_source']}, {report['overall_fps']:.1f} frames/s)")


def run(cfg: InferenceConfig) -> list[dict]:
    import demo_data
    check_config(cfg)
    torch.set_num_threads(cfg.threads or default_threads())
    input_path = Path(cfg.input_dir) if cfg.input_dir else demo_data.demo_clip()
    if cfg.compare_area is None:  # the demo shows what it saves, measured; a user's run does not pay for that
        cfg = replace(cfg, compare_area=not cfg.input_dir)
    if not input_path.exists():
        raise UserError(f"--input_dir {input_path}: no such file or folder")
    output_dir = Path(cfg.output_dir)
    check_apart(output_dir, "--output_dir", {"--input_dir": input_path, "--masks_dir": cfg.roi.masks_dir,
                                             "--checkpoint_path": cfg.checkpoint_path,
                                             "--seg_model_path": cfg.roi.seg_model_path})
    sequences = find_sequences(input_path)
    device = engine.pick_device(cfg.device)
    model, ckpt_name = load_downsampler(cfg)
    engine.apply_knobs(model, cfg.knobs, closed_loop=cfg.enc.rd_control).to(device)
    reports = []
    with ResultFolder(output_dir, "--output_dir") as result:
        for name, seq in sequences:
            out_dir = result.path / name if name else result.path
            report = run_sequence(model, cfg, seq, out_dir, device)
            report.update(checkpoint=ckpt_name, scale_factor=cfg.scale_factor, device=str(device),
                          roi_options=asdict(cfg.roi), **asdict(cfg.knobs))
            atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
            reports.append((report, output_dir / name if name else output_dir))
        result.commit()
    for report, final_dir in reports:
        print(summary_line(report, final_dir))
    return [r for r, _ in reports]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def start(a):
        cfg = config_from_args(a)
        if cfg.ray:
            import batch
            check_config(cfg)
            return batch.run(cfg, run)
        return run(cfg) and 0
    return run_cli(start, args, "complete results were kept; run the same command again")


if __name__ == "__main__":
    from errors import exit_now
    exit_now(main())
