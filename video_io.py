"""Video I/O: stream frames in from a folder or a video file, stream them out as PNGs and H.264.

Everything here is streaming: a reader yields one RGB uint8 frame (H, W, 3) at a time and a
writer takes one at a time, so memory does not grow with the length of the video.

Policies (also in the README):
- A folder of frames is read in natural order (``2.png`` before ``10.png``); hidden files are ignored.
- Frames whose size is not a multiple of the scale factor are cropped to the largest multiple
  (at most s-1 bottom/right pixels dropped), so the output is exactly floor(H/s) x floor(W/s).
- H.264 in yuv420p needs even sizes: an odd output is edge-padded by one pixel *in the mp4 only*;
  the PNG frames keep the exact size.
- Every file is written to a temporary name and renamed into place, so a crash never leaves a
  half-written frame, video or checkpoint behind. Nothing is ever written into the input.
"""
from __future__ import annotations

import fractions
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
DEFAULT_FPS = 25.0
_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """A problem with the user's input, reported as one line (no traceback) by every CLI."""


def plain_warnings() -> None:
    """CLI warnings as one line ('WARNING: ...'), without Python's source-line echo."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"WARNING: {message}\n"


def natural_key(name: str):
    """Sort key so that 'frame2.png' < 'frame10.png'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frame_files(folder: Path) -> list[Path]:
    """Image files of a folder in natural order, hidden files ignored."""
    files = [p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_video_file(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in VIDEO_EXTS


@dataclass
class VideoInfo:
    source: str
    width: int
    height: int
    fps: float
    num_frames: Optional[int]  # None when the container does not say


def read_image_rgb(path: Path) -> np.ndarray:
    """One image as RGB uint8; UserError naming the file when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UserError(f"{path}: cannot decode this image; replace or remove it "
                        f"(or pass --skip_bad_frames to skip unreadable frames)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def check_input_path(path) -> Path:
    """Validate an --input_dir argument: a non-empty frame folder or a supported video file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder; pass a folder of frames or a video file "
                        f"({', '.join(sorted(VIDEO_EXTS))})")
    if p.is_file() and p.suffix.lower() not in VIDEO_EXTS:
        raise UserError(f"{p}: unsupported file type '{p.suffix}'; pass a video "
                        f"({', '.join(sorted(VIDEO_EXTS))}) or a folder of frames")
    if p.is_dir() and not list_frame_files(p):
        raise UserError(f"{p}: folder has no frames ({', '.join(sorted(IMAGE_EXTS))}); "
                        f"point to a folder of images or a video file")
    return p


class FrameReader:
    """Iterate RGB uint8 frames of a frame folder or a video file, one at a time.

    ``skip_bad=True`` turns an undecodable frame into a warning and skips it (opt-in);
    otherwise it is a UserError naming the file. Frames of a different size are always an error.
    """

    def __init__(self, path, fps: Optional[float] = None, skip_bad: bool = False):
        self.path = check_input_path(path)
        self.skip_bad = skip_bad
        self.skipped: list[str] = []
        if self.path.is_dir():
            self.files = list_frame_files(self.path)
            first = self._first_readable()
            h, w = first.shape[:2]
            self.info = VideoInfo(str(self.path), w, h, float(fps or DEFAULT_FPS), len(self.files))
        else:
            self.files = None
            self.info = probe_video(self.path)
            if fps:
                self.info.fps = float(fps)

    def _first_readable(self) -> np.ndarray:
        for f in self.files:
            try:
                return read_image_rgb(f)
            except UserError:
                if not self.skip_bad:
                    raise
        raise UserError(f"{self.path}: none of the {len(self.files)} frames could be decoded")

    def __len__(self) -> int:
        return self.info.num_frames or 0

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.files is not None:
            yield from self._iter_folder()
        else:
            yield from self._iter_video()

    def _iter_folder(self):
        for f in self.files:
            try:
                frame = read_image_rgb(f)
            except UserError:
                if not self.skip_bad:
                    raise
                warnings.warn(f"skipping unreadable frame {f}")
                self.skipped.append(str(f))
                continue
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise UserError(f"{f}: frame is {frame.shape[1]}x{frame.shape[0]} but the first frame "
                                f"is {self.info.width}x{self.info.height}; all frames must have one size")
            yield frame

    def _iter_video(self):
        import av
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise UserError(f"{self.path}: video cannot be decoded ({e.__class__.__name__}); "
                            f"re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4) or extract frames") from None


def probe_video(path: Path) -> VideoInfo:
    """Size, fps and frame count of a video file (count None if the container does not say)."""
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: file has no video stream; pass a video or a folder of frames")
            s = container.streams.video[0]
            fps = float(s.average_rate) if s.average_rate else DEFAULT_FPS
            n = s.frames or None
            return VideoInfo(str(path), s.codec_context.width, s.codec_context.height, fps, n)
    except av.error.FFmpegError as e:
        raise UserError(f"{path}: not a readable video ({e.__class__.__name__}); "
                        f"check the file or extract its frames to a folder") from None


def crop_to_multiple(frame: np.ndarray, s: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of s (documented odd-size policy)."""
    h, w = frame.shape[:2]
    if h < s or w < s:
        raise UserError(f"frame of {w}x{h} is smaller than the scale factor {s}")
    return frame[: h - h % s, : w - w % s]


# ----------------------------------------------------------------------------------- writing


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(path, image: np.ndarray) -> None:
    """RGB (H,W,3) or gray (H,W) uint8 to PNG, atomically."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    # zlib level 1 with the "up" filter: as small as the default filter choice here, ~35% faster
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                           cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise UserError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def frame_name(index: int) -> str:
    """Output frame naming contract: 00000.png, 00001.png, ..."""
    return f"{index:05d}.png"


class _H264Stream:
    """A libx264 (yuv420p) stream in an open PyAV container: odd sizes are edge-padded to even,
    and the H.264 payload (sum of packet sizes) is counted. threads=0 lets x264 choose."""

    def __init__(self, container, fps: float, crf: int, preset: str, threads: int = 0):
        self.container = container
        self.stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.thread_count = threads
        self.stream.options = {"crf": str(int(crf)), "preset": preset}
        self.frames = self.payload = 0

    def write(self, rgb: np.ndarray) -> None:
        import av
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self.frames == 0:
            self.stream.width, self.stream.height = rgb.shape[1], rgb.shape[0]
        self._mux(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
        self.frames += 1

    def flush(self) -> None:
        self._mux(None)

    def _mux(self, frame) -> None:
        for packet in self.stream.encode(frame):
            self.payload += packet.size
            self.container.mux(packet)


class H264Writer:
    """Stream RGB frames into an H.264 (libx264, yuv420p) mp4 at a given CRF and fps.

    Written to a hidden temp file and renamed on close(), so an interrupted run leaves no
    truncated video under the final name. Odd sizes are edge-padded to even (mp4 only).
    """

    def __init__(self, path, fps: float, crf: int = 23, preset: str = "veryfast"):
        import av
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.container = av.open(str(self.tmp), mode="w")
        self.encoder = _H264Stream(self.container, fps, crf, preset)

    def write(self, rgb: np.ndarray) -> None:
        self.encoder.write(rgb)

    def close(self) -> int:
        """Flush, move into place, return the size in bytes."""
        self.encoder.flush()
        self.container.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass
        if self.tmp.exists():
            self.tmp.unlink()


def encode_h264_bytes(frames, fps: float, crf: int, preset: str = "medium") -> tuple[int, list[np.ndarray]]:
    """Encode frames with libx264 in memory (for evaluation): return (bitstream bytes, decoded RGB).

    Bytes are the H.264 payload (sum of packet sizes), not the mp4 file: the container's fixed
    ~1 kB would otherwise swamp small clips. One encoder thread, because x264's output depends
    on its thread count, and the same frames must give the same bytes on every machine.
    """
    import av
    h, w = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        encoder = _H264Stream(container, fps, crf, preset, threads=1)
        for f in frames:
            encoder.write(f)
        encoder.flush()
        size = encoder.payload
    buffer.seek(0)
    with av.open(buffer, format="mp4") as c:
        decoded = [f.to_ndarray(format="rgb24")[:h, :w] for f in c.decode(video=0)]
    return size, decoded
