"""Training data: find sequences in a dataset folder, cache ROI masks once, sample random clips.

Layouts of --dataset_path, detected in this order:
1. DAVIS (2016 or 2017): ``JPEGImages/480p/<seq>/*`` with ``Annotations/480p/<seq>/*.png`` (human
   object masks: the ground truth the losses score; a sequence without annotations uses --roi_source);
2. a folder of sequences, each a subfolder of frames;
3. a folder of video files (decoded once into the run's cache);
4. a single frame folder or video file (one sequence).

Every random choice of sample i in epoch e comes from a generator seeded with (seed, e, i), so a
resumed run draws exactly the clips the uninterrupted run would have, whatever the worker count.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from roi_sources import (KeyframeSource, MotionSource, RoiOptions, YoloSegmenter, YoloUnavailable, load_yolo,
                         read_mask_file)
from video_io import FrameReader, frame_name, is_video_file, list_frame_files, read_image_rgb, write_png
from errors import UserError, warn


@dataclass
class Sequence:
    name: str
    frames: list[Path]
    masks: Optional[list[Path]] = None      # annotations (ground truth), one per frame
    roi_masks: Optional[list[Path]] = None  # what the network sees (cached detector masks); None = masks


@dataclass
class Discovery:
    layout: str
    sequences: list[Sequence]
    skipped: list[str] = field(default_factory=list)  # "name: reason"


def _davis_sequences(root: Path):
    img_root, ann_root = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
    for d in sorted(p for p in img_root.iterdir() if p.is_dir()):
        ann = ann_root / d.name
        masks = list_frame_files(ann) if ann.is_dir() else None
        yield d.name, d, masks


def _video_to_frames(video: Path, cache: Path) -> Path:
    """Decode a video once into cache/<stem>/NNNNN.png (reused when complete)."""
    out = cache / video.stem
    stamp = out / ".complete"
    key = f"{video.stat().st_size}:{video.stat().st_mtime_ns}"
    if stamp.exists() and stamp.read_text() == key:
        return out
    for i, frame in enumerate(tqdm(FrameReader(video), desc=f"decoding {video.name}", unit="frame", leave=False)):
        write_png(out / frame_name(i), frame)
    stamp.write_text(key)
    return out


def check_frames(frames: list[Path]) -> None:
    """Every frame decodes and has the first frame's size (a bad frame in the middle of a
    sequence would otherwise stop training hours later, inside a data-loader worker)."""
    size = None
    for f in frames:
        data = np.fromfile(str(f), dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8) if data.size else None
        if img is None:
            raise UserError(f"frame {f.name} cannot be decoded")
        full = read_image_size(f)
        if size is not None and full != size:
            raise UserError(f"frame {f.name} is {full[1]}x{full[0]}, the first is {size[1]}x{size[0]}")
        size = full


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header."""
    from PIL import Image
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def discover(dataset_path, cache_dir: Path) -> Discovery:
    """Find the sequences of a dataset folder; bad ones are reported by name and skipped."""
    root = Path(dataset_path)
    if not root.exists():
        raise UserError(f"--dataset_path {root}: no such folder; pass a folder of sequences, a DAVIS-2017 "
                        f"root, a folder of videos, or run `bash train.sh` for the demo data")
    if (root / "JPEGImages" / "480p").is_dir():
        layout, candidates = "davis", list(_davis_sequences(root))
    elif root.is_file() or (root.is_dir() and list_frame_files(root)):
        layout, candidates = "single", [(root.stem, root, None)]
    else:
        subs = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        videos = [p for p in subs if is_video_file(p)]
        folders = [p for p in subs if p.is_dir()]
        layout = "videos" if videos and not folders else "sequences"
        candidates = [(p.stem if p.is_file() else p.name, p, None) for p in (videos if layout == "videos" else folders)]
    result = Discovery(layout, [])
    for name, path, masks in candidates:
        try:
            if path.is_file():
                path = _video_to_frames(path, cache_dir / "decoded")
            frames = list_frame_files(path)
            if len(frames) < 2:
                raise UserError("fewer than 2 frames")
            check_frames(frames)
            if masks is not None and len(masks) != len(frames):
                raise UserError(f"{len(masks)} masks for {len(frames)} frames")
            result.sequences.append(Sequence(name, frames, masks))
        except UserError as e:
            result.skipped.append(f"{name}: {e}")
    for s in result.skipped:
        warn(f"skipping sequence {s}")
    if not result.sequences:
        raise UserError(f"--dataset_path {root}: no usable sequence found ({layout} layout, "
                        f"{len(result.skipped)} skipped); it needs subfolders of frames, video files, "
                        f"or a DAVIS-2017 root (JPEGImages/480p/<seq>)")
    return result


def discover_all(roots: list, cache_dir: Path) -> Discovery:
    """Several datasets trained on together; sequence names must stay unique."""
    found = [discover(r, cache_dir) for r in roots if str(r)]
    if not found:
        raise UserError("--dataset_path is empty; pass a dataset folder")
    merged = Discovery("+".join(f.layout for f in found), [s for f in found for s in f.sequences],
                       [k for f in found for k in f.skipped])
    names = [s.name for s in merged.sequences]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--dataset_path: sequence name(s) {', '.join(dup)} occur in more than one dataset; rename")
    return merged


def split_sequences(seqs: list[Sequence], val_fraction: float, val_names: Optional[list[str]] = None):
    """Train/validation split by sequence, never by frame; deterministic (by name hash)."""
    if val_names:
        unknown = set(val_names) - {s.name for s in seqs}
        if unknown:
            raise UserError(f"--val_sequences: unknown sequence(s) {', '.join(sorted(unknown))}")
        val = [s for s in seqs if s.name in val_names]
    else:
        n_val = int(round(len(seqs) * val_fraction)) if len(seqs) > 1 else 0
        n_val = max(n_val, 1) if len(seqs) > 1 and val_fraction > 0 else n_val
        order = sorted(seqs, key=lambda s: hashlib.sha1(s.name.encode()).hexdigest())
        val = order[:n_val]
    train = [s for s in seqs if s not in val]
    if not train:
        raise UserError("no training sequence left after the validation split; lower --val_fraction")
    return train, val


# ------------------------------------------------------------------------------- mask cache


def source_key(description: dict) -> str:
    return hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


def cache_masks(seq: Sequence, make_source: Callable, key: str, cache_dir: Path) -> Sequence:
    """Compute the network's input ROI masks (``roi_masks``) for every frame once, keep them on disk.

    The cache file of a frame is named by a hash of the frame's bytes and the source `key`
    (model file, classes, thresholds), so a changed frame or model recomputes, nothing else does.
    Sources with memory (motion) see the whole sequence in order whenever anything is missing.
    """
    folder = cache_dir / key / seq.name
    names = [hashlib.sha1(f.read_bytes()).hexdigest()[:16] + ".png" for f in seq.frames]
    paths = [folder / n for n in names]
    if not all(p.exists() for p in paths):
        source = make_source()
        stateful = getattr(source, "stateful", False)
        for f, p in tqdm(list(zip(seq.frames, paths)), desc=f"ROI masks {seq.name}", unit="frame", leave=False):
            if p.exists() and not stateful:
                continue  # cached, and a stateless source need not see this frame
            write_png(p, (source.mask(read_image_rgb(f)) > 0.5).astype(np.uint8) * 255)
    return Sequence(seq.name, seq.frames, seq.masks, paths)


# ------------------------------------------------------------------------------- sampling


def jitter_masks(masks: np.ndarray, rng) -> np.ndarray:
    """Make masks behave like a real detector's: per frame a random dilation or erosion, and now
    and then a missed frame. The model then learns what a jittery ROI costs at the encoder."""
    out = []
    for m in masks:
        k = int(rng.choice([0, 3, 5, 9, 13]))
        if k:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
            m = cv2.dilate(m, kernel) if rng.random() < 0.7 else cv2.erode(m, kernel)
        if rng.random() < 0.1:
            m = np.zeros_like(m)
        out.append(m)
    return np.stack(out)


class ClipDataset(torch.utils.data.Dataset):
    """Random T-frame clips with random crops and flips (train), or fixed clips (validation:
    the first T frames, centre crop, or the whole frame when crop_size is 0).

    A sample is (frames, input masks, scoring masks): the network sees the detector's masks
    (``roi_masks``) where they exist; the losses score the annotation united with them, so a
    missed or ragged detector mask costs what it costs the user. Without a detector both are the
    annotation, and the input is jittered half the time to look like a detector's."""

    def __init__(self, sequences: list[Sequence], clip_length: int, crop_size: int, scale: int,
                 samples_per_epoch: int, seed: int = 0, train: bool = True):
        self.seqs, self.scale = sequences, scale
        self.T = min([clip_length] + [len(s.frames) for s in sequences])
        sizes = [read_image_rgb(s.frames[0]).shape[:2] for s in sequences]
        crop = min([crop_size] + [min(hw) for hw in sizes])  # one crop size: batches must stack
        self.crop = crop - crop % (2 * scale) if crop_size else 0  # 0: whole frames (validation)
        self.n, self.seed, self.train, self.epoch = samples_per_epoch, seed, train, 0
        for s in sequences:
            if s.masks is None and s.roi_masks is None:
                raise ValueError(f"sequence {s.name} has no masks; call cache_masks first")

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, i])
        seq = self.seqs[rng.integers(len(self.seqs))] if self.train else self.seqs[i % len(self.seqs)]
        T = self.T
        start = int(rng.integers(len(seq.frames) - T + 1)) if self.train else 0
        frames = np.stack([read_image_rgb(f) for f in seq.frames[start:start + T]])
        given = np.stack([read_mask_file(m) for m in (seq.roi_masks or seq.masks)[start:start + T]])
        scored = given if seq.masks is None or seq.roi_masks is None else \
            np.maximum(given, np.stack([read_mask_file(m) for m in seq.masks[start:start + T]]))
        h, w = frames.shape[1:3]
        m = 2 * self.scale
        ch, cw = (self.crop, self.crop) if self.crop else (h - h % m, w - w % m)
        y = int(rng.integers(h - ch + 1)) if self.train else (h - ch) // 2
        x = int(rng.integers(w - cw + 1)) if self.train else (w - cw) // 2
        frames, given, scored = (a[:, y:y + ch, x:x + cw] for a in (frames, given, scored))
        if self.train and rng.random() < 0.5:
            frames, given, scored = frames[:, :, ::-1], given[:, :, ::-1], scored[:, :, ::-1]
        if self.train and seq.roi_masks is None and rng.random() < 0.5:
            given = jitter_masks(given, rng)
        f = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
        m_in, m_score = (torch.from_numpy(np.ascontiguousarray(a))[:, None].float() for a in (given, scored))
        return f, m_in, m_score


def mask_source_factory(roi: RoiOptions, needed: bool):
    """(key, factory) of the ROI source the network sees, following --roi_source; (None, None)
    when annotations are the input (``masks``, or ``auto`` on a dataset that has them all)."""
    kind = roi.roi_source
    if kind == "masks" or not needed:
        return None, None
    if kind in ("auto", "yolo"):
        try:
            model = load_yolo(roi.seg_model_path)
            st = Path(roi.seg_model_path).stat() if Path(roi.seg_model_path).is_file() else None
            seg = YoloSegmenter(model, roi.roi_classes, roi.conf, roi.seg_imgsz)
            key = source_key({"yolo": str(roi.seg_model_path), "size": st and st.st_size,
                              "mtime": st and st.st_mtime_ns, "classes": roi.roi_classes,
                              "conf": roi.conf, "imgsz": seg.imgsz})
            source = KeyframeSource(seg, interval=1)  # every frame, stateless
            return key, lambda: source
        except YoloUnavailable as e:
            if kind == "yolo":
                raise
            warn(f"{e} -- sequences without annotations use --roi_source motion")
    return source_key({"motion": MotionSource.VERSION}), MotionSource


def prepare_sequences(dataset_paths: list[str], roi: RoiOptions, run_dir: Path, val_names: list[str],
                      val_fraction: float, rank: int = 0):
    """Sequences with the network's input masks cached (in run_dir/cache), split by sequence into
    (discovery, train, validation). --roi_source yolo|motion: every sequence gets detector masks as
    input (annotations, where present, are what the losses score); auto: annotations as input where
    they exist. Under torchrun rank 0 computes the masks and the others read them."""
    import torch.distributed as dist
    found = discover_all(dataset_paths, run_dir / "cache")
    detect_all = roi.roi_source in ("yolo", "motion")
    needs = [s for s in found.sequences if detect_all or s.masks is None]
    key, factory = mask_source_factory(roi, bool(needs))
    seqs = []
    for s in found.sequences:
        if s in needs:
            if factory is None:
                found.skipped.append(f"{s.name}: no annotation masks (--roi_source masks)")
                continue
            if rank == 0:
                s = cache_masks(s, factory, key, run_dir / "cache" / "masks")
        seqs.append(s)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        seqs = [cache_masks(s, factory, key, run_dir / "cache" / "masks") if s in needs else s for s in seqs]
    train, val = split_sequences(seqs, val_fraction, val_names)
    return found, train, val
