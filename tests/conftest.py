import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video_io import write_png  # noqa: E402


def moving_square_frames(n=6, h=48, w=64, seed=0):
    """A textured background with a bright square moving right: ROI = the square."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 200, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    frames, masks = [], []
    for t in range(n):
        f = bg.copy()
        m = np.zeros((h, w), np.uint8)
        x = 4 + 3 * t
        f[10:26, x:x + 16] = [230, 60, 40]
        m[10:26, x:x + 16] = 255
        frames.append(f)
        masks.append(m)
    return frames, masks


@pytest.fixture
def frame_folder(tmp_path):
    frames, masks = moving_square_frames()
    d, md = tmp_path / "clip", tmp_path / "clip_masks"
    for i, (f, m) in enumerate(zip(frames, masks)):
        write_png(d / f"frame{i}.png", f)
        write_png(md / f"frame{i}.png", m)
    return d
