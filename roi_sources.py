"""Where ROI masks come from: YOLOv8 segmentation, a weight-free motion fallback, or mask files.

Every source is a small object with ``mask(frame_rgb) -> float32 (H, W) in [0, 1]`` called once per
frame in order, so sources may keep state (background model, last keyframe). ``make_roi_source``
builds one from the CLI flags and applies the offline policy:

- ``yolo``: Ultralytics weights must be loadable, else a one-line error (nothing is written);
- ``auto``: YOLO when its weights load, otherwise a loud one-line warning and ``motion``;
- ``motion``: OpenCV MOG2 background subtraction, no weights at all;
- ``masks``: binary masks from a folder, named like the frames (DAVIS palette PNGs work too).

With ``--roi_motion on`` (the default) a detector's masks are united with what moves while the
camera is still (``StillCameraUnion``): on a static camera nothing that moves is coarsened or held,
whether the detector saw it or not; a moving camera keeps the detector's masks alone. With
``--skip_quiet_keyframes on`` the detector also skips keyframes where nothing has moved since it ran.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from errors import UserError, warn
from video_io import IMAGE_EXTS, list_frame_files

DEFAULT_SEG_MODEL = str(Path(__file__).resolve().parent / "models" / "yolov8n-seg.pt")  # in the clone, from anywhere
DEFAULT_ROI_CLASSES = "all"  # every object the segmenter knows; narrow it (person,car) for more savings
YOLO_HELP = ("download yolov8n-seg.pt from the Ultralytics assets release into models/ "
             "(or pass --seg_model_path, .pt or exported .onnx), or use --roi_source motion")
ROI_SOURCES = ("auto", "yolo", "motion", "masks")
SEG_RUNTIMES = ("auto", "torch")
ONNX_CACHE = Path(__file__).resolve().parent / ".cache" / "onnx"  # .pt segmenters exported for ONNX Runtime


@dataclass
class RoiOptions:
    """Where ROI masks come from: the same flags (add_roi_args) for inference, evaluation and training."""
    roi_source: str = "auto"
    seg_model_path: str = DEFAULT_SEG_MODEL
    roi_classes: str = DEFAULT_ROI_CLASSES
    conf: float = 0.25
    seg_imgsz: Optional[int] = None   # None: the model's fixed input size, else 640
    keyframe_interval: int = 1
    masks_dir: Optional[str] = None
    roi_motion: str = "on"
    seg_runtime: str = "auto"
    skip_quiet_keyframes: str = "off"


def add_roi_args(p: argparse.ArgumentParser, default_source: str = "auto", only: Optional[Sequence[str]] = None,
                 source_help: Optional[str] = None) -> None:
    """The ROI flags every CLI that finds objects shares (defaults from RoiOptions); ``only``: the
    RoiOptions fields a CLI offers (training runs the detector on every frame, alone)."""
    d = RoiOptions()
    flags = {
        "roi_source": dict(default=default_source, help=source_help or  # checked by check_roi_options: one line
                           "auto: YOLO if its weights load, else motion; yolo; motion; masks (files in --masks_dir)"),
        "seg_model_path": dict(default=d.seg_model_path, help="Ultralytics YOLO segmentation weights: .pt, or an "
                               "exported .onnx (needs onnxruntime)"),
        "roi_classes": dict(default=d.roi_classes, help="comma-separated COCO classes, or 'all'"),
        "conf": dict(type=float, default=d.conf, help="YOLO confidence threshold"),
        "seg_imgsz": dict(type=int, default=None, help="YOLO input size (default: an exported .onnx's fixed size; "
                          "640 for a .pt, Ultralytics' own. Mean IoU with the human masks of 14 DAVIS clips at "
                          "640 / 480 / 320: 0.58 / 0.56 / 0.51, at 73 / 48 / 29 ms a frame: benchmark.py roi)"),
        "keyframe_interval": dict(type=int, default=d.keyframe_interval,
                                  help="run YOLO every N frames, flow-warp masks between"),
        "masks_dir": dict(default=None, help="0/255 PNG masks named like the frames (--roi_source masks)"),
        "roi_motion": dict(default=d.roi_motion, help="on | off: while the camera is still, what moves is ROI "
                           "too, detected or not"),
        "skip_quiet_keyframes": dict(default=d.skip_quiet_keyframes, help="on | off: with --roi_motion on, while "
                                     "the camera is still and nothing has moved since YOLO last ran, a keyframe "
                                     "carries its masks instead of running it again (still at least every 25 frames)"),
        "seg_runtime": dict(default=d.seg_runtime, help="auto: on the CPU a .pt segmenter runs in ONNX Runtime, "
                            "exported once into .cache/onnx/ (the same masks in about half the time); torch: in "
                            "PyTorch as loaded"),
    }
    for name, kw in flags.items():
        if only is None or name in only:
            p.add_argument(f"--{name}", **kw)


def roi_options(args) -> RoiOptions:
    """The RoiOptions part of a parsed Namespace (or any object with those attributes), checked."""
    return check_roi_options(RoiOptions(**{k: getattr(args, k) for k in RoiOptions.__dataclass_fields__}))


def check_roi_options(opts: RoiOptions) -> RoiOptions:
    """One-line errors for ROI flags that could only fail later."""
    if opts.roi_source not in ROI_SOURCES:
        raise UserError(f"--roi_source {opts.roi_source}: choose one of {', '.join(ROI_SOURCES)}")
    if not 0 < opts.conf <= 1:  # also false for nan
        raise UserError(f"--conf must be a confidence in (0, 1], got {opts.conf}")
    if opts.seg_imgsz is not None and not 32 <= opts.seg_imgsz <= 4096:
        raise UserError(f"--seg_imgsz must be in 32..4096 pixels, got {opts.seg_imgsz}")
    if opts.keyframe_interval < 1:
        raise UserError(f"--keyframe_interval must be >= 1, got {opts.keyframe_interval}")
    if opts.roi_motion not in ("on", "off"):
        raise UserError(f"--roi_motion {opts.roi_motion}: choose on or off")
    if opts.skip_quiet_keyframes not in ("on", "off"):
        raise UserError(f"--skip_quiet_keyframes {opts.skip_quiet_keyframes}: choose on or off")
    if opts.seg_runtime not in SEG_RUNTIMES:
        raise UserError(f"--seg_runtime {opts.seg_runtime}: choose {' or '.join(SEG_RUNTIMES)}")
    return opts


def onnx_signature(path: Path) -> tuple[Optional[int], int]:
    """(the square input size an exported .onnx model was fixed to or None, its number of outputs:
    2 for a segmenter, 1 for a detector); UserError when it is not an ONNX model at all."""
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"{path}: not a loadable ONNX model ({type(e).__name__}); pass an Ultralytics export "
                        f"(yolo export format=onnx) or a .pt") from None
    h, w = session.get_inputs()[0].shape[-2:]
    size = int(max(h, w)) if isinstance(h, int) and isinstance(w, int) else None
    return size, len(session.get_outputs())


COCO_NAMES = tuple(n.replace("_", " ") for n in (  # "traffic light", as Ultralytics names them
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush").split())


class YoloUnavailable(UserError):
    """YOLO weights missing or unloadable (offline, wrong path, corrupt file)."""


def load_yolo(seg_model_path: str, task: str = "segment", flag: str = "--seg_model_path", runtime: str = "torch"):
    """Load an Ultralytics YOLO model (.pt, exported .onnx, or .yaml); YoloUnavailable with the fix
    if it cannot. ``task`` is "segment" for ROI masks, "detect" for the evaluation's detector.
    runtime "auto": a .pt that loads is run by ONNX Runtime through its export (export_onnx, once;
    ``.runtime`` says which ran).

    A ``.yaml`` name (e.g. ``yolov8n-seg.yaml``) builds the architecture with random weights: the
    same cost, useful for speed benchmarks only.
    """
    try:
        from ultralytics import YOLO
    except ImportError:
        raise YoloUnavailable("ultralytics is not installed; pip install -r requirements.txt, "
                              "or use --roi_source motion") from None
    from ultralytics.utils import LOGGER, is_online
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    path = Path(seg_model_path)
    if path.suffix.lower() not in (".pt", ".onnx", ".yaml"):  # Ultralytics would fail at the first frame
        raise UserError(f"{path}: not a YOLO model file ({path.suffix or 'no extension'}); pass an Ultralytics "
                        f".pt or an exported .onnx as {flag}")
    if path.suffix.lower() == ".onnx":
        try:
            import onnxruntime  # noqa: F401  (Ultralytics would try to pip-install it at run time)
        except ImportError:
            raise YoloUnavailable(f"{path}: .onnx models need onnxruntime; pip install onnxruntime") from None
    if path.suffix != ".yaml" and not path.is_file():
        # Ultralytics downloads known asset names (online users); anything else cannot work.
        if path.name not in GITHUB_ASSETS_NAMES or not is_online():
            raise YoloUnavailable(f"{path}: YOLO segmentation weights not found"
                                  f"{'' if path.name not in GITHUB_ASSETS_NAMES else ' (offline: no download)'}; {YOLO_HELP}")
    safe_ultralytics()
    if path.suffix.lower() == ".onnx":
        fixed, outputs = onnx_signature(path)
        if outputs != {"segment": 2, "detect": 1}[task]:
            kind = {2: "a segmentation", 1: "a detection"}.get(outputs, f"a {outputs}-output")
            raise UserError(f"{path}: {kind} model, but a {task} model is needed for {flag}; pass a YOLO "
                            f"{'segmentation (-seg)' if task == 'segment' else 'detection'} model")
    twin = _twin_path(path) if runtime == "auto" and path.suffix.lower() == ".pt" and path.is_file() else None
    if twin is not None and twin.is_file():  # this very .pt loaded, passed the checks below and was exported
        return _onnx_runtime_model(twin, task)
    level = LOGGER.level
    LOGGER.setLevel("ERROR")  # its download retries and warnings would bury our one-line message
    try:
        model = YOLO(str(path), task=task)
        if path.suffix.lower() == ".onnx":
            model.fixed_imgsz = fixed
    except Exception as e:  # ConnectionError offline, a corrupt file, a pickle that would run code, ...
        if not path.is_file():
            raise YoloUnavailable(f"{path}: YOLO weights could not be downloaded; {YOLO_HELP}") from None
        # the file is there but is not a model we load: an error, never a silent fallback
        raise UserError(f"{path}: not a loadable YOLO model ({type(e).__name__}: refused or unreadable; only "
                        f"plain Ultralytics checkpoints and exported .onnx files load, nothing that runs code); "
                        f"pass another {flag}") from None
    finally:
        LOGGER.setLevel(level)
    if path.suffix.lower() == ".pt" and getattr(model, "task", task) != task:
        raise UserError(f"{path}: a {model.task} model, but a {task} model is needed for {flag}; pass a YOLO "
                        f"{'segmentation (-seg)' if task == 'segment' else 'detection'} model")
    model.runtime = "onnxruntime" if path.suffix.lower() == ".onnx" else "torch"
    if twin is not None and export_onnx(path, twin, task):
        return _onnx_runtime_model(twin, task)
    return model


def _onnx_runtime_model(twin: Path, task: str):
    from ultralytics import YOLO
    model = YOLO(str(twin), task=task)
    model.fixed_imgsz, model.runtime = None, "onnxruntime"  # exported for any input size
    return model


def safe_ultralytics() -> None:
    """Make Ultralytics load every .pt with torch's weights_only unpickler and its allow-list of
    model classes (ULTRALYTICS_SAFE_LOAD), whenever and by whom it was imported: a .pt that would
    run code when unpickled is refused."""
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils
    tasks.SAFE_LOAD = ultralytics.utils.SAFE_LOAD = True


def _twin_path(pt_path: Path) -> Path:
    """Where a .pt's ONNX export is kept: one per .pt content and Ultralytics version."""
    import ultralytics
    digest = hashlib.sha256(pt_path.read_bytes()).hexdigest()[:16]
    return ONNX_CACHE / f"{pt_path.stem}-{digest}-ultralytics{ultralytics.__version__}.onnx"


def export_onnx(pt_path: Path, target: Path, task: str = "segment") -> bool:
    """Export the .pt to ONNX (float32, any input size) for ONNX Runtime as `target` in .cache/onnx/
    (written atomically; the user's folder is never written to). The same network: on 94 DAVIS
    frames the same masks, pixel for pixel, in 48 instead of 88 ms a frame. False, with one
    warning, when it cannot be made."""
    try:
        import onnx  # noqa: F401  (both are in requirements.txt; without them the .pt runs in PyTorch)
        import onnxruntime  # noqa: F401
        from ultralytics import YOLO
        from ultralytics.utils import LOGGER
    except ImportError:
        return False
    level = LOGGER.level
    LOGGER.setLevel("ERROR")  # the exporter's report
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # a read-only clone: the warning below, and PyTorch
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about shape-dependent branches
            copy = Path(tmp) / "model.pt"  # Ultralytics writes the export beside the weights: not the user's folder
            shutil.copyfile(pt_path, copy)
            exported = YOLO(str(copy), task=task).export(format="onnx", dynamic=True, simplify=False)
            os.replace(exported, target)
    except Exception as e:
        warn(f"{pt_path}: could not export it for ONNX Runtime ({type(e).__name__}); running it in PyTorch "
             f"(--seg_runtime torch skips the attempt)")
        return False
    finally:
        LOGGER.setLevel(level)
    return True


def requested_classes(roi_classes: Optional[str]) -> Optional[list[str]]:
    """The class names --roi_classes asks for, as typed (trimmed); None for every class."""
    if not roi_classes or roi_classes.strip().lower() == "all":
        return None
    return [n.strip() for n in roi_classes.split(",")]


def warn_unknown_classes(roi_classes: Optional[str]) -> None:
    """Without the model its classes cannot be checked: a name that is no COCO class is said in one
    line now (a typo would otherwise surface only once the weights are there)."""
    unknown = [n for n in requested_classes(roi_classes) or [] if n.lower() not in COCO_NAMES]
    if unknown:
        warn(f"--roi_classes: {', '.join(unknown)} {'is no COCO class' if len(unknown) == 1 else 'are no COCO classes'} "
             f"(a typo?); checked against the segmenter's own classes once its weights load")


def class_ids(model, roi_classes: Optional[str]) -> Optional[list[int]]:
    """'person,car' -> COCO ids of the model; None keeps every class."""
    wanted = requested_classes(roi_classes)
    if wanted is None:
        return None
    names = dict(model.names)
    if all(str(n).isdigit() for n in names.values()) and len(names) == len(COCO_NAMES):
        names = dict(enumerate(COCO_NAMES))  # built from .yaml: no names
    by_name = {str(n).lower(): i for i, n in names.items()}
    ids = []
    for name in wanted:
        name = name.lower()
        if name not in by_name:
            raise UserError(f"--roi_classes: unknown class '{name}'; choose from {', '.join(sorted(by_name))}")
        ids.append(by_name[name])
    return ids


def input_size(model, requested: Optional[int]) -> int:
    """The YOLO input size: an exported model's fixed size wins over --seg_imgsz (with a warning)."""
    fixed = getattr(model, "fixed_imgsz", None)
    if fixed and requested and requested != fixed:
        warn(f"--seg_imgsz {requested} ignored: the model's input is fixed at {fixed}")
    return fixed or requested or 640


def quiet_session(path):
    """An ONNX Runtime CPU session with torch's thread count whose threads sleep between runs.
    Its defaults (a thread per core, spinning while idle) took CPU from the pipeline's other
    stages: 720p, keyframe interval 5, whole process 1.05x the time of the .pt in PyTorch, and
    0.96x with this session (paired runs)."""
    import onnxruntime as ort
    import torch
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def _quick(predictor: type) -> type:
    class Predictor(predictor):
        def setup_model(self, *args, **kwargs):
            super().setup_model(*args, **kwargs)
            self.done_warmup = True
            backend = getattr(self.model, "backend", None)
            if getattr(backend, "session", None) is not None and \
                    backend.session.get_providers() == ["CPUExecutionProvider"]:
                backend.session = quiet_session(self.args.model)
    return Predictor


def quick_predictor(model) -> type:
    """The model's own Ultralytics predictor, without its warm-up and, for ONNX models on the CPU,
    with a quiet_session. On the CPU the warm-up runs no model; it only imports torchvision (2-3 s
    of every run's start-up, most of it torch._dynamo) so that NMS uses torchvision's kernel.
    Without it Ultralytics uses its own NMS, which gives the same masks and boxes (tested on real
    frames)."""
    return _quick(model.task_map[model.task]["predictor"])


class YoloSegmenter:
    """Union of the instance masks of the chosen classes, via the polygons Ultralytics returns
    in original-image coordinates (cheaper than full-resolution 'retina' masks)."""

    def __init__(self, model, roi_classes: Optional[str] = DEFAULT_ROI_CLASSES, conf: float = 0.25,
                 imgsz: Optional[int] = None, device: Optional[str] = None):
        self.model, self.conf, self.device = model, conf, device
        self.imgsz = input_size(model, imgsz)
        self.runtime = getattr(model, "runtime", "torch")  # torch or onnxruntime (load_yolo)
        self.classes = class_ids(model, roi_classes)
        self.predictor = quick_predictor(model)
        # Ultralytics loads the weights (for ONNX Runtime: builds its session, ~0.15 s) at the first
        # predict: done now, on a tiny image (at a fixed-size export's own size), so that loading is
        # start-up, not the first frame's time, and a model that cannot run fails before any frame
        self._predict(np.zeros((32, 32, 3), np.uint8), imgsz=getattr(model, "fixed_imgsz", None) or 32)

    def _predict(self, bgr: np.ndarray, imgsz: int):
        import torch
        from ultralytics.utils import LOGGER
        level, threads = LOGGER.level, torch.get_num_threads()
        LOGGER.setLevel("WARNING")  # its "Loading ... for ONNX Runtime" lines at the first call
        try:
            return self.model.predict(bgr, imgsz=imgsz, conf=self.conf, classes=self.classes, device=self.device,
                                      verbose=False, predictor=self.predictor)[0]
        finally:
            LOGGER.setLevel(level)
            torch.set_num_threads(threads)  # its first predict sets min(8, cores - 1): 1 thread on 2 cores

    def segment(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        result = self._predict(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), self.imgsz)  # frame[..., ::-1]: a 3 ms copy inside
        mask = np.zeros((h, w), np.uint8)
        if result.masks is not None:
            for poly in result.masks.xy:
                if len(poly) >= 3:
                    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        return mask.astype(np.float32)


def _small_gray(frame: np.ndarray, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    size = (width, max(1, round(h * width / w)))
    return cv2.cvtColor(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)


# Farneback's pyramid scale, levels, window, iterations, poly_n, poly_sigma. A 7-pixel window and one
# iteration carry masks better than OpenCV's sample settings (15, 3), in 60 % of the time: mean IoU
# with the human masks of 14 DAVIS clips on the frames between keyframes 5 apart 0.758 vs 0.729,
# 3.4 vs 6.0 ms a 256-pixel-wide frame (benchmark.py roi)
FLOW_PARAMS = (0.5, 3, 7, 1, 5, 1.2)


def farneback_flow(gray: np.ndarray, prev_gray: np.ndarray, params=FLOW_PARAMS) -> np.ndarray:
    """Dense flow from the current frame back to the previous one: where each current pixel came from."""
    return cv2.calcOpticalFlowFarneback(gray, prev_gray, None, *params, 0)


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    grid.flags.writeable = False
    return grid


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Move `image` (aligned with the previous frame) onto the current one along a backward flow."""
    mapping = _pixel_grid(*flow.shape[:2]) + flow
    return cv2.remap(image, mapping[..., 0], mapping[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class KeyframeSource:
    """Runs an expensive segmenter every `interval` frames and carries its mask in between by
    warping it with dense optical flow (Farneback at low resolution), so objects stay covered.

    A keyframe told ``quiet`` (nothing has moved since the segmenter last ran: StillCameraUnion
    knows) carries the mask too: the segmenter would see the same picture. It still runs at least
    every `max_quiet` frames, for what moves too little or too faintly for the motion detector."""

    def __init__(self, segmenter, interval: int = 1, flow_width: int = 256, flow=farneback_flow,
                 max_quiet: int = 25):
        if interval < 1:
            raise UserError(f"--keyframe_interval must be >= 1, got {interval}")
        self.segmenter, self.interval, self.flow_width, self.flow = segmenter, interval, flow_width, flow
        self.max_quiet = max_quiet
        self.stateful = interval > 1  # warping needs every frame, in order
        self.index, self.prev_gray, self.prev_mask = 0, None, None
        self.runs, self.last_run, self.detected = 0, 0, False  # calls; index of the last; did this frame call
        self.lookahead = interval  # frames a reader may announce() ahead of mask()
        self.announced, self.pending, self.beside = 0, {}, None  # pending: keyframe index -> its segmentation

    def announce(self, frame: np.ndarray, segment: bool = True) -> None:
        """Told of each frame as it is read, up to ``lookahead`` frames before mask() is asked for
        it: a keyframe is then segmented on the detector's own thread (the runtimes release the
        GIL) while flow and the network work on the frames before it. The same masks, sooner.
        ``segment`` False: not ahead (it will likely be carried); mask() segments it if it must."""
        i, self.announced = self.announced, self.announced + 1
        if segment and i % self.interval == 0:
            if self.beside is None:  # the thread ends when this object is collected
                from concurrent.futures import ThreadPoolExecutor
                self.beside = ThreadPoolExecutor(1, thread_name_prefix="detector")
            self.pending[i] = self.beside.submit(self.segmenter.segment, frame)

    def _segment(self, frame: np.ndarray) -> np.ndarray:
        """This frame's segmentation: announced (on the detector's thread), else made now (on that
        thread too once it exists: the model is never run by two threads at once)."""
        soon = self.pending.pop(self.index, None)
        if soon is None and self.beside is not None:
            soon = self.beside.submit(self.segmenter.segment, frame)
        return soon.result() if soon is not None else self.segmenter.segment(frame)

    def mask(self, frame: np.ndarray, name: Optional[str] = None, quiet: bool = False) -> np.ndarray:
        gray = _small_gray(frame, self.flow_width) if self.interval > 1 else None
        due = self.index % self.interval == 0 or self.prev_mask is None
        carry = quiet and self.prev_mask is not None and self.index - self.last_run < self.max_quiet
        self.detected = due and not carry
        if self.detected:
            full = self._segment(frame)
            small = cv2.resize(full, gray.shape[::-1], interpolation=cv2.INTER_AREA) if gray is not None else full
            self.runs, self.last_run = self.runs + 1, self.index
        elif gray is None:  # every frame a keyframe (no flow kept): nothing moved, the mask stays
            small = full = self.prev_mask
        else:
            small = warp_by_flow(self.prev_mask, self.flow(gray, self.prev_gray))
            full = cv2.resize(small, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
        self.pending.pop(self.index, None)  # announced but carried (quiet): not needed
        self.index += 1
        self.prev_gray, self.prev_mask = gray, small
        return full


class MotionSource:
    """Weight-free ROI: moving things, by OpenCV's MOG2 background subtraction at low resolution.

    A hand-held or wind-shaken camera moves every edge a pixel or two, which background
    subtraction reads as motion everywhere; so each frame is first aligned to the first one (a
    similarity transform from tracked corners, RANSAC) and subtracted there, and the mask is
    mapped back. Speckle is opened away; the fragments of one object (a car's wheels, lights and
    edges) are joined by a closing and filled as convex blobs, then dilated, so whole objects are
    kept sharp rather than patches of them. A camera that pans far from its first view loses the
    alignment and is re-anchored (its first frames there are ROI: safe, but fewer savings)."""

    stateful = True  # needs every frame, in order
    VERSION = 3      # part of the training mask-cache key: bump when the algorithm changes

    def __init__(self, work_width: int = 320, history: int = 120, var_threshold: float = 24.0):
        self.work_width, self.history, self.var_threshold = work_width, history, var_threshold
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.join = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
        self.anchor = None  # (gray, corners) of the frame everything is aligned to
        self.drift = 0.0    # work pixels the current frame's corners moved from the anchor's

    def _reanchor(self, small: np.ndarray, gray: np.ndarray) -> None:
        self.bg = cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=self.var_threshold,
                                                     detectShadows=False)
        corners = cv2.goodFeaturesToTrack(gray, 200, 0.01, 8)
        self.anchor = (gray, corners)
        self.frames = 0

    def _to_anchor(self, gray: np.ndarray):
        """The similarity transform taking this frame onto the anchor, or None when it cannot be
        found (too few corners follow: a big pan, a cut)."""
        ref, corners = self.anchor
        if corners is None or len(corners) < 12:
            return None
        moved, ok, _ = cv2.calcOpticalFlowPyrLK(ref, gray, corners, None, winSize=(21, 21), maxLevel=3)
        ok = ok[:, 0] == 1
        if ok.sum() < 12:
            return None
        m, inliers = cv2.estimateAffinePartial2D(moved[ok], corners[ok], method=cv2.RANSAC,
                                                 ransacReprojThreshold=1.5)
        if m is None or inliers.sum() < 0.5 * ok.sum():
            return None
        return m

    def mask(self, frame: np.ndarray, name: Optional[str] = None) -> np.ndarray:
        return full_size(self.moving(frame), frame.shape[:2])

    def moving(self, frame: np.ndarray) -> np.ndarray:
        """What moves in this frame: a 0/1 float mask at the work resolution."""
        h, w = frame.shape[:2]
        width = min(self.work_width, w)
        small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        size = (small.shape[1], small.shape[0])
        m = self._to_anchor(gray) if self.anchor is not None else None
        if m is None:
            self.drift = 0.0 if self.anchor is None else float("inf")  # lost: the camera moved far
            self._reanchor(small, gray)
            m = np.float32([[1, 0, 0], [0, 1, 0]])
        else:
            corners = np.float32([[0, 0, 1], [size[0], 0, 1], [0, size[1], 1], [size[0], size[1], 1]])
            self.drift = float(np.abs(corners @ m.T - corners[:, :2]).max())
        aligned = cv2.warpAffine(small, m, size, borderMode=cv2.BORDER_REPLICATE)
        # a fixed, slow learning rate after the first frame: MOG2's default (1/frames seen) absorbs
        # a slowly moving car into the background within a few frames
        rate = 1.0 if self.frames == 0 else 1.0 / self.history
        fg = self.bg.apply(cv2.GaussianBlur(aligned, (3, 3), 0), learningRate=rate)
        self.frames += 1
        if self.frames == 1:  # MOG2 calls everything foreground before it has seen a frame
            fg[:] = 0
        fg = cv2.warpAffine(fg, cv2.invertAffineTransform(m), size, flags=cv2.INTER_NEAREST)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self.kernel)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self.join)
        contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        solid = np.zeros_like(fg)
        cv2.drawContours(solid, [cv2.convexHull(c) for c in contours], -1, 255, thickness=cv2.FILLED)
        solid = cv2.dilate(solid, self.kernel)
        return (solid > 0).astype(np.float32)


def full_size(small: np.ndarray, size) -> np.ndarray:
    """A work-resolution mask brought to the frame's (h, w) size, nearest neighbour."""
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


@functools.lru_cache(maxsize=16)
def _nearest_counts(n_small: int, n_full: int) -> np.ndarray:
    """How many of n_full rows (or columns) full_size takes from each of n_small."""
    index = cv2.resize(np.arange(n_small, dtype=np.float32)[None], (n_full, 1), interpolation=cv2.INTER_NEAREST)[0]
    return np.bincount(index.astype(np.int64), minlength=n_small)


def full_size_share(small: np.ndarray, size) -> float:
    """full_size(small, size).mean() of a 0/1 mask, without making the full-size mask: its count of
    ones from the small one, divided as numpy's float32 mean divides its (exact, below 2**24 pixels) sum."""
    h, w = size
    if h * w >= 2 ** 24:
        return float(full_size(small, size).mean())
    count = int(_nearest_counts(small.shape[0], h) @ small.astype(np.int64) @ _nearest_counts(small.shape[1], w))
    return float(np.float32(count) / np.float32(h * w))


class StillCameraUnion:
    """A detector's masks united with what moves (MotionSource) while the camera is still and
    little of the view moves: the view within STILL_DRIFT work pixels (1 % of the width) of the
    motion anchor, and on average (over about a second) at most MAX_MOVING_SHARE of it moving. A
    detector misses small things (unknown classes, far or occluded objects) and on a static
    camera motion finds them; motion over much of the view is the scene itself (a moving camera,
    smoke, water, a crowd, the world through a car window), so there the detector stands alone."""

    stateful = True
    STILL_DRIFT = 3.0
    MAX_MOVING_SHARE = 0.05
    WINDOW = 25  # frames the moving share is averaged over

    def __init__(self, detector, motion: Optional[MotionSource] = None, skip_quiet: bool = False):
        from concurrent.futures import ThreadPoolExecutor
        self.detector, self.motion = detector, motion or MotionSource()
        self.segmenter = getattr(detector, "segmenter", None)  # what report.json describes
        self.moving_share, self.seen = 0.0, 0
        # skip_quiet: the detector (a KeyframeSource) is told when the view has been still and
        # motionless since it last ran, from the frames before this one (this one's motion is
        # united below in any case)
        self.skip_quiet, self.quiet = skip_quiet, False
        # motion runs beside the detector (both release the GIL): one frame's ROI in the time of the
        # slower; the thread ends when this object is collected
        self.beside = ThreadPoolExecutor(1, thread_name_prefix="motion")
        self.lookahead = getattr(detector, "lookahead", 0)

    def announce(self, frame: np.ndarray) -> None:
        """Passed on to the detector (KeyframeSource.announce). While skipping, whether a keyframe
        is quiet is known only once the frames before it are seen: it is segmented ahead only while
        the view is not quiet now (a keyframe that turns quiet meanwhile costs one unused run)."""
        self.detector.announce(frame, segment=not (self.skip_quiet and self.quiet))

    def mask(self, frame: np.ndarray, name: Optional[str] = None) -> np.ndarray:
        moving_soon = self.beside.submit(self.motion.moving, frame)
        found = self.detector.mask(frame, name, quiet=self.quiet) if self.skip_quiet else self.detector.mask(frame, name)
        moving, size = moving_soon.result(), frame.shape[:2]  # brought to full size only when it is used
        still = self.motion.drift <= self.STILL_DRIFT
        if self.skip_quiet:  # motion in the detector's own frame counts too: it may go on moving
            self.quiet = (self.detector.detected or self.quiet) and still and not moving.any()
        self.seen += 1
        self.moving_share += (full_size_share(moving, size) - self.moving_share) / min(self.seen, self.WINDOW)
        if still and self.moving_share <= self.MAX_MOVING_SHARE:
            return np.maximum(found, full_size(moving, size))
        return found


def read_mask_file(path: Path) -> np.ndarray:
    """A mask image -> float (H, W): any non-zero pixel (or palette index) is ROI."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("P", "L", "1", "I", "I;16") else im.convert("L"))
    except Exception:
        raise UserError(f"{path}: cannot read this mask; masks are 0/255 PNGs named like the frames") from None
    return (arr > 0).astype(np.float32)


class MaskFolderSource:
    """Masks from files: matched to frames by file stem when `frame_names` is given (frame folders),
    otherwise by order (video input)."""

    def __init__(self, masks_dir, frame_names: Optional[Sequence[str]] = None):
        self.dir = Path(masks_dir) if masks_dir else None
        if self.dir is None or not self.dir.is_dir():
            raise UserError(f"--masks_dir {masks_dir}: not a folder; --roi_source masks needs a folder of "
                            f"0/255 PNG masks named like the frames")
        files = list_frame_files(self.dir)
        if not files:
            raise UserError(f"{self.dir}: no mask images found ({', '.join(sorted(IMAGE_EXTS))})")
        self.by_stem = {f.stem: f for f in files}
        self.files = files
        self.by_name = frame_names is not None
        if frame_names is not None:  # check every frame has its mask before anything is written
            missing = [n for n in frame_names if Path(n).stem not in self.by_stem]
            if missing:
                raise UserError(f"{self.dir}: no mask for frame '{missing[0]}' ({len(missing)} missing); "
                                f"expected {Path(missing[0]).stem}.png")
        self.index = 0
        self.warned_size = False

    def mask(self, frame: np.ndarray, name: Optional[str] = None) -> np.ndarray:
        """The mask of this frame: by the frame's file name (frame folders; so a skipped frame
        never shifts the masks), else by order (video input)."""
        i, self.index = self.index, self.index + 1
        if self.by_name and name is not None:
            stem = Path(name).stem
            if stem not in self.by_stem:
                raise UserError(f"{self.dir}: no mask for frame '{name}'; expected {stem}.png")
            path = self.by_stem[stem]
        else:
            if i >= len(self.files):
                raise UserError(f"{self.dir}: {len(self.files)} masks but the video has more frames")
            path = self.files[i]
        m = read_mask_file(path)
        h, w = frame.shape[:2]
        if m.shape[0] - h in range(8) and m.shape[1] - w in range(8):
            m = m[:h, :w]  # the frame was cropped to a multiple of the scale factor
        if m.shape[:2] != (h, w):
            mh, mw = m.shape[:2]
            if abs(mw / mh - w / h) > 0.01 * (w / h):
                raise UserError(f"{path}: mask is {mw}x{mh} but the frame is {w}x{h} (another aspect ratio); "
                                f"masks must match the frames")
            if not self.warned_size:
                warn(f"{path}: mask is {mw}x{mh}, frames are {w}x{h}; masks are resized to the frames")
                self.warned_size = True
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        return m


def make_roi_source(opts: RoiOptions, frame_names=None, device=None, yolo_model=None):
    """Build the ROI source the flags ask for; returns (source, name of the source actually used).

    --masks_dir with --roi_source auto means "use these masks" (said in one line)."""
    kind = opts.roi_source
    if opts.keyframe_interval < 1:
        raise UserError(f"--keyframe_interval must be >= 1, got {opts.keyframe_interval}")
    if opts.masks_dir and kind == "auto":
        warn(f"--masks_dir {opts.masks_dir} given: using those masks (--roi_source masks)")
        kind = "masks"
    elif opts.masks_dir and kind != "masks":
        warn(f"--masks_dir is ignored with --roi_source {kind}")
    if kind == "masks":
        return MaskFolderSource(opts.masks_dir, frame_names), "masks"
    if kind == "motion":
        return MotionSource(), "motion"
    if kind not in ("yolo", "auto"):
        raise UserError(f"--roi_source {kind}: choose {', '.join(ROI_SOURCES)}")
    try:
        model = yolo_model or load_yolo(opts.seg_model_path, runtime=opts.seg_runtime if device in (None, "cpu")
                                        else "torch")
    except YoloUnavailable as e:
        if kind == "yolo":
            raise
        warn(f"{e} -- falling back to --roi_source motion")
        warn_unknown_classes(opts.roi_classes)
        return MotionSource(), "motion"
    if opts.skip_quiet_keyframes == "on" and opts.roi_motion == "off":
        warn("--skip_quiet_keyframes is ignored with --roi_motion off (quiet is what the motion detector sees)")
    seg = YoloSegmenter(model, opts.roi_classes, opts.conf, opts.seg_imgsz, device)
    source = KeyframeSource(seg, opts.keyframe_interval)
    if opts.roi_motion == "on":
        return StillCameraUnion(source, skip_quiet=opts.skip_quiet_keyframes == "on"), "yolo+motion"
    return source, "yolo"

