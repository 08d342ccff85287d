"""Pictures people would rather look at than read: debug side-by-sides and parameter plots."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from video_io import atomic_write_bytes, write_png

PANEL_WIDTH = 480


def _fit(img: np.ndarray, width: int, interp=cv2.INTER_AREA) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=interp)


def write_side_by_side(path: Path, frame: np.ndarray, roi_mask: np.ndarray, soft_mask: np.ndarray,
                       output: np.ndarray) -> None:
    """input with the ROI mask in red | soft importance map | output upscaled (nearest) for viewing."""
    width = min(PANEL_WIDTH, frame.shape[1])
    overlay = frame.astype(np.float32)
    m = roi_mask[..., None].astype(np.float32)
    overlay = overlay * (1 - 0.45 * m) + np.array([255, 0, 0], np.float32) * 0.45 * m
    panels = [_fit(overlay.clip(0, 255).astype(np.uint8), width),
              _fit(cv2.cvtColor(soft_mask, cv2.COLOR_GRAY2RGB), width, cv2.INTER_NEAREST),
              _fit(output, width, cv2.INTER_NEAREST)]
    h = min(p.shape[0] for p in panels)
    sep = np.full((h, 4, 3), 255, np.uint8)
    write_png(path, np.concatenate([panels[0][:h], sep, panels[1][:h], sep, panels[2][:h]], 1))


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure to PNG atomically and close it."""
    import io
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_parameters(path: Path, params: list[dict]) -> None:
    """The sequence analyser's parameters over time, one line each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name in params[0]:
        ax.plot([p[name] for p in params], label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("value")
    ax.set_title("predicted downsampling parameters")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
