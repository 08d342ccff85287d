"""Pictures people would rather look at than read: debug side-by-sides, parameter plots, and the
object-leaves strip (does what left the view leave video.mp4 too?):

    python debug_viz.py --input clip.mp4 --output_dir output/clip --frame 112 --to leaving.png
"""
from __future__ import annotations

import argparse
import json
import sys
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
    write_png(path, join([p[:h] for p in panels], axis=1))


def join(panels: list, axis: int, trailing_gap: bool = False) -> np.ndarray:
    """RGB panels of one size side by side (axis 1) or stacked (axis 0) with 4-pixel white gaps
    between them (and after the last with trailing_gap)."""
    shape = list(panels[0].shape)
    shape[axis] = 4
    gap = np.full(shape, 255, np.uint8)
    parts = [x for p in panels for x in (gap, p)][1:] + ([gap] if trailing_gap else [])
    return np.concatenate(parts, axis)


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


def _labelled(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def strip_times(frame: int, fps: float) -> list[int]:
    """Half a second before ``frame``, at it, half a second and a second after."""
    step = max(1, round(fps / 2))
    return [t for t in (frame - step, frame, frame + step, frame + 2 * step) if t >= 0]


def frames_at(reader, times) -> tuple[dict, int]:
    """The frames of ``reader`` at the given indices (the rest is read and dropped, so a long
    clip is never held in memory), and how many frames it has."""
    wanted, kept, n = set(times), {}, 0
    for n, f in enumerate(reader, 1):
        if n - 1 in wanted:
            kept[n - 1] = f
    return kept, n


def leaving_strip(inputs: dict, decoded: dict, s: int, frame: int, fps: float, width: int = 320) -> np.ndarray:
    """Columns: the strip_times both clips have (index -> frame); rows: the input, video.mp4 as
    decoded, and |video.mp4 - area downscaling| x 4 (a ghost is a bright patch that outlives the
    object)."""
    from video_io import area_downscale, crop_to_multiple
    columns = []
    for t in sorted(set(inputs) & set(decoded)):
        cropped = crop_to_multiple(inputs[t], s)  # as inference reads it
        area = area_downscale(cropped, s)
        diff = np.clip(4 * np.abs(decoded[t].astype(np.int16) - area.astype(np.int16)), 0, 255).astype(np.uint8)
        rows = [_labelled(_fit(cropped, width), f"input, t = {(t - frame) / fps:+.1f} s"),
                _labelled(_fit(decoded[t], width, cv2.INTER_NEAREST), "video.mp4"),
                _labelled(_fit(diff, width, cv2.INTER_NEAREST), "|video.mp4 - area| x4")]
        columns.append(join(rows, axis=0, trailing_gap=True))
    return join(columns, axis=1)


def main(argv=None) -> int:
    from errors import UserError, run_cli
    from video_io import FrameReader

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the clip inference.py read (video file or folder of frames)")
    p.add_argument("--output_dir", required=True, help="inference.py's output folder (video.mp4, report.json)")
    p.add_argument("--frame", type=int, required=True, help="the frame where an object leaves the view")
    p.add_argument("--to", required=True, help="PNG to write")

    def run(args) -> int:
        out = Path(args.output_dir)
        if not (out / "report.json").is_file() or not (out / "video.mp4").is_file():
            raise UserError(f"--output_dir {out}: no video.mp4 + report.json; run inference.py into it first")
        s = int(json.loads((out / "report.json").read_text())["scale_factor"])
        reader = FrameReader(args.input)
        times = strip_times(args.frame, reader.info.fps)
        inputs, n_in = frames_at(reader, times)
        decoded, n_out = frames_at(FrameReader(out / "video.mp4"), times)
        if not 0 <= args.frame < min(n_in, n_out):
            raise UserError(f"--frame {args.frame}: the clip has {min(n_in, n_out)} frames")
        write_png(Path(args.to), leaving_strip(inputs, decoded, s, args.frame, reader.info.fps))
        print(f"wrote {args.to}")
        return 0

    return run_cli(run, p.parse_args(argv), "nothing was written")


if __name__ == "__main__":
    sys.exit(main())
