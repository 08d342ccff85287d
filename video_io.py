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
import functools
import io
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from errors import UserError, warn

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
DEFAULT_FPS = 25.0
_UMASK = os.umask(0)
os.umask(_UMASK)


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
    width: int
    height: int
    fps: float
    num_frames: Optional[int]  # None when the container does not say


class quiet_opencv:
    """Silence OpenCV's own [ WARN ]/[ERROR] log lines while decoding: our one-line error says it."""

    def __enter__(self):
        self.level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

    def __exit__(self, *exc):
        cv2.utils.logging.setLogLevel(self.level)


def read_image_rgb(path: Path) -> np.ndarray:
    """One image as RGB uint8; UserError naming the file when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    with quiet_opencv():
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

    ``skip_bad=True`` turns an undecodable frame (or a truncated video's missing end) into a
    warning, recorded in ``skipped`` (opt-in); otherwise it is a UserError naming the file and the
    frame reached. Frames of a different size are always an error. ``last_name`` is the file name
    of the frame just yielded (frame folders), so masks can be paired by name. RGBA alpha is dropped.
    A video's display rotation (phone footage) is applied, with a one-line note.
    """

    def __init__(self, path, fps: Optional[float] = None, skip_bad: bool = False):
        self.path = check_input_path(path)
        self.skip_bad = skip_bad
        self.skipped: list[str] = []
        self.last_name: Optional[str] = None
        self.rotated = False
        if self.path.is_dir():
            self.files = list_frame_files(self.path)
            first = self._first_readable()
            h, w = first.shape[:2]
            self.info = VideoInfo(w, h, float(fps or DEFAULT_FPS), len(self.files))
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
                warn(f"skipping unreadable frame {f}")
                self.skipped.append(str(f))
                continue
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise UserError(f"{f}: frame is {frame.shape[1]}x{frame.shape[0]} but the first frame "
                                f"is {self.info.width}x{self.info.height}; all frames must have one size")
            self.last_name = f.name
            yield frame

    def _iter_video(self):
        import av
        n, expected = 0, self.info.num_frames
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                if not expected and container.duration and stream.average_rate:  # e.g. mkv: from the duration
                    expected = int(container.duration / 1e6 * float(stream.average_rate) + 0.5)
                    slack = 2
                else:
                    slack = 0
                for frame in container.decode(stream):
                    n += 1
                    yield self._upright(convert(frame, "rgb24").to_ndarray(), getattr(frame, "rotation", 0))
        except av.error.FFmpegError as e:
            self._truncated(f"decoding failed at frame {n} ({e.__class__.__name__})")
            return
        if expected and n < expected - slack:
            self._truncated(f"the container announces {expected} frames but only {n} decode (truncated?)")

    def _upright(self, image: np.ndarray, rotation) -> np.ndarray:
        """Apply the video's display rotation (phone videos), as players do; said once."""
        turns = round(-(rotation or 0) / 90) % 4  # PyAV: counter-clockwise degrees; np.rot90(k=-1): clockwise
        if not turns:
            return image
        image = np.ascontiguousarray(np.rot90(image, k=-turns))
        if not self.rotated:
            warn(f"{self.path}: display rotation of {90 * turns} degrees clockwise applied "
                 f"(frames are {image.shape[1]}x{image.shape[0]} upright)")
            self.rotated = True
            self.info.width, self.info.height = image.shape[1], image.shape[0]
        return image

    def _truncated(self, what: str) -> None:
        if not self.skip_bad:
            raise UserError(f"{self.path}: {what}; repair or re-encode the video (e.g. ffmpeg -i in -c:v libx264 "
                            f"out.mp4), or pass --skip_bad_frames to keep the frames that decode")
        warn(f"{self.path}: {what}; keeping the frames that decode (--skip_bad_frames)")
        self.skipped.append(f"{self.path}: {what}")


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
            return VideoInfo(s.codec_context.width, s.codec_context.height, fps, n)
    except av.error.FFmpegError as e:
        raise UserError(f"{path}: not a readable video ({e.__class__.__name__}); "
                        f"check the file or extract its frames to a folder") from None


def crop_to_multiple(frame: np.ndarray, s: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of s (documented odd-size policy)."""
    h, w = frame.shape[:2]
    if h < s or w < s:
        raise UserError(f"frame of {w}x{h} is smaller than the scale factor {s}")
    return frame[: h - h % s, : w - w % s]


def area_downscale(frame: np.ndarray, s: int) -> np.ndarray:
    """The reference every output is compared with: the mean of each s x s block (OpenCV's
    INTER_AREA at an integer factor), a partial block at the bottom/right edge dropped."""
    h, w = frame.shape[:2]
    return cv2.resize(frame, (w // s, h // s), interpolation=cv2.INTER_AREA)


def _sorting_network(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort: compare-exchange pairs that sort n (a power of two) values."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def temporal_median(frames) -> np.ndarray:
    """np.median(frames, axis=0) of equal-shape uint8 frames, as uint8 (an even count's two middle
    values averaged, rounded down), by a sorting network of element-wise min/max: ~12x faster
    than np.median for a dozen frames, which partitions a strided axis pixel by pixel."""
    n, size = len(frames), 1
    while size < n:
        size *= 2
    pad = size - n  # zeros sort first: the frames' order statistics are `pad` places on
    x = [np.zeros_like(frames[0])] * pad + list(frames)
    for a, b in _sorting_network(size):
        if b >= pad:  # two pads compare to nothing
            x[a], x[b] = np.minimum(x[a], x[b]), np.maximum(x[a], x[b])
    mid = pad + n // 2
    if n % 2:
        return x[mid]
    return ((x[mid - 1].astype(np.uint16) + x[mid]) // 2).astype(np.uint8)


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


MARKER = ".roi_downsampler_result"  # inside every result: the files this tool wrote there, one per line


def written_files(folder: Path) -> set[str]:
    """Every file under folder, hidden ones included, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def is_result_folder(folder: Path) -> bool:
    """A folder this tool wrote and nobody added to since: our marker lists every file in it.
    Names alone prove nothing (a dataset has frames/ and masks/ too)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        ours = set(marker.read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return False
    return written_files(folder) <= ours | {MARKER}


def check_apart(output, flag: str, inputs: dict) -> None:
    """An output never goes into, over, or around any input (resolved paths, symlinks followed):
    inputs maps a flag (e.g. "--masks_dir") to its path, None when not given."""
    out = Path(output).resolve()
    for name, path in inputs.items():
        if path is None or not str(path):
            continue
        inp = Path(path).resolve()
        if out == inp or inp in out.parents:
            raise UserError(f"{flag} {output} is inside {name} {path}; inputs are never written to, choose "
                            f"another {flag} (e.g. output/run1)")
        if out in inp.parents:
            raise UserError(f"{name} {path} is inside {flag} {output}, which this run writes; choose another "
                            f"{flag} (e.g. output/run1)")


class ResultFolder:
    """Build a result in a hidden sibling folder and move it into place on commit(), so the final
    folder holds a complete result or nothing new (error, Ctrl-C, SIGTERM: the temp is removed;
    after a kill, the next run into the same folder removes what was left).

    An existing folder is replaced as a whole only when it is an earlier result that nobody added
    to (see is_result_folder); an empty folder is used; anything else is an error and is never
    touched. A lock file refuses a second run into the same folder while the first is writing."""

    def __init__(self, final, flag: str = "--output_dir"):
        self.final, self.flag = Path(final), flag
        self.path: Optional[Path] = None
        self.lock = None

    def __enter__(self) -> "ResultFolder":
        import fcntl
        final = self.final
        if final.exists() and not final.is_dir():
            raise UserError(f"{self.flag} {final}: is a file, not a folder; choose another {self.flag}")
        if final.is_dir() and any(final.iterdir()) and not is_result_folder(final):
            raise UserError(f"{self.flag} {final}: holds files this tool did not write; choose an empty or new "
                            f"folder (an earlier result there is replaced as a whole)")
        # temp folder and lock beside the nearest folder that exists: missing parents are made only
        # when the result is complete, so an error leaves no empty folders behind
        self.base = next(p for p in final.absolute().parents if p.is_dir())
        self.stem = "_".join(final.absolute().relative_to(self.base).parts)
        self.lock = open(self.base / f".{self.stem}.lock", "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise UserError(f"{self.flag} {final}: another run is writing there; wait for it or choose "
                            f"another folder") from None
        self._remove_leftovers()
        self.path = Path(tempfile.mkdtemp(dir=self.base, prefix=f".{self.stem}.partial-"))
        os.chmod(self.path, 0o777 & ~_UMASK)
        return self

    def _remove_leftovers(self) -> None:
        """Temp folders of a run into this folder that was killed: nobody else holds the lock."""
        import shutil
        for prefix in (".partial-", ".old-"):
            for p in self.base.glob(f".{glob_escape(self.stem)}{prefix}*"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)

    def commit(self) -> None:
        """Mark the finished temp folder as ours and swap it into place (an earlier result is
        removed after the swap)."""
        import shutil
        atomic_write_bytes(self.path / MARKER, "\n".join(sorted(written_files(self.path))).encode())
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(dir=self.base, prefix=f".{self.stem}.old-"))
            os.replace(self.final, old / "result")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, self.final)
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        import shutil
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()
            Path(self.lock.name).unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


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


def roi_rectangles(mask: np.ndarray, block: int = 16) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) rectangles on the macroblock grid that cover every non-zero pixel of `mask`:
    runs of ROI macroblocks per row, merged downwards while they have the same extent."""
    h, w = mask.shape[:2]
    rows, cols = -(-h // block), -(-w // block)
    padded = np.zeros((rows * block, cols * block), bool)
    padded[:h, :w] = mask > 0
    blocks = padded.reshape(rows, block, cols, block).any((1, 3))
    open_runs, rects = {}, []  # (x0, x1) -> [y0, y1]
    for r in range(rows + 1):
        runs = set()
        if r < rows:
            c = 0
            while c < cols:
                if blocks[r, c]:
                    c0 = c
                    while c < cols and blocks[r, c]:
                        c += 1
                    runs.add((c0, c))
                c += 1
        for run in list(open_runs):
            if run not in runs:
                y0, y1 = open_runs.pop(run)
                rects.append((run[0] * block, y0 * block, (run[1] - run[0]) * block, (y1 - y0) * block))
        for run in runs:
            if run in open_runs:
                open_runs[run][1] = r + 1
            else:
                open_runs[run] = [r, r + 1]
    return [(x, y, min(rw, w - x), min(rh, h - y)) for x, y, rw, rh in sorted(rects, key=lambda t: (t[1], t[0]))]


def quant_regions(rects, roi_qoffset: float, background_qoffset: float, width: int, height: int):
    """x264 quantiser regions, first wins: the objects' rectangles at roi_qoffset, the rest of the
    frame at background_qoffset (both x 51 QP at 8 bits; positive = coarser)."""
    regions = [(r, roi_qoffset) for r in rects]
    if background_qoffset:
        regions.append(((0, 0, width, height), background_qoffset))
    return regions


@functools.lru_cache(maxsize=None)
def _av_filter(name: str):
    """A PyAV filter by name, looked up once: PyAV's lookup by name was most of the cost of a frame's
    ROI graph (~3x)."""
    import av.filter
    return av.filter.Filter(name)


def with_roi_offsets(frame, regions):
    """The frame with x264 ROI quantiser offsets attached (AV_FRAME_DATA_REGIONS_OF_INTEREST), by
    running FFmpeg's ``addroi`` filter once per region ((x, y, w, h), qoffset) in order; where
    regions overlap the first one wins (libx264 applies the list in reverse). qoffset in -1..1
    of x264's quantiser range; x264 honours it with adaptive quantisation on (its default)."""
    import av.filter
    if not regions:
        return frame
    graph = av.filter.Graph()
    if hasattr(graph, "threads"):  # one thread: a graph starts its slice threads anew for every frame
        graph.threads = 1
    node = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                            time_base=frame.time_base or fractions.Fraction(1, 25))
    for (x, y, w, h), q in regions:
        roi = graph.add(_av_filter("addroi"), f"x={x}:y={y}:w={w}:h={h}:qoffset={q:.4f}")
        node.link_to(roi)
        node = roi
    sink = graph.add(_av_filter("buffersink"))
    node.link_to(sink)
    graph.configure()
    graph.push(frame)
    return graph.pull()


class QualityMeter:
    """Measures a stream as a decoder shows it: the encoder's packets are decoded as they come,
    and every frame is compared with the reference given at write time (area downscaling), inside
    and outside its ROI. Nothing is held but the frames x264 is still looking ahead at."""

    def __init__(self):
        import collections
        self.decoder = None
        self.pending = collections.deque()   # (reference RGB, ROI bool) in display order
        self.sums = np.zeros(4)              # roi sse, roi samples, background sse, background samples

    def expect(self, reference: np.ndarray, roi: np.ndarray) -> None:
        """reference: uint8 RGB (what the decoded frame should be); roi: bool (H, W)."""
        self.pending.append((np.ascontiguousarray(reference), np.ascontiguousarray(roi, dtype=np.uint8)))

    def decode(self, packet, codec_context) -> None:
        import av
        if self.decoder is None:
            self.decoder = av.CodecContext.create("h264", "r")
            self.decoder.extradata = codec_context.extradata
        for frame in self.decoder.decode(packet):
            self._compare(frame)

    def _compare(self, frame) -> None:
        reference, roi = self.pending.popleft()  # uint8 RGB, uint8 0/1
        h, w = reference.shape[:2]
        decoded = np.ascontiguousarray(convert(frame, "rgb24").to_ndarray()[:h, :w])
        total = cv2.norm(decoded, reference, cv2.NORM_L2SQR)  # exact integer sums, ~5x numpy's speed
        inside = cv2.norm(decoded, reference, cv2.NORM_L2SQR, mask=roi)
        n_inside = 3 * cv2.countNonZero(roi)
        self.sums += (inside, n_inside, total - inside, 3 * h * w - n_inside)

    def finish(self) -> dict:
        """{"roi_psnr", "bg_psnr"} of everything written (None where there were no such pixels)."""
        if self.decoder is not None:
            for frame in self.decoder.decode(None):
                self._compare(frame)
            self.decoder = None

        def psnr(sse, count):
            return None if count == 0 else float(10 * np.log10(255.0 ** 2 / max(sse / count, 1e-10)))
        return {"roi_psnr": psnr(*self.sums[:2]), "bg_psnr": psnr(*self.sums[2:])}


def _has_avx512() -> bool:
    """NumPy's own run-time CPU detection (any OS; NumPy 2 and 1.x)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get("AVX512BW"))


X264_ASM = "AVX2" if _has_avx512() else None


def x264_options(crf: int, preset: str) -> dict:
    """libx264's options for every stream written or measured. Where the CPU has AVX-512, x264 is
    held to its AVX2 code: its AVX-512 code gives other bytes for the same frames (and on small
    frames, other bytes from run to run), so sizes and the closed loop's choices would depend on
    the machine. Measured here: the same bytes with x264's SSSE3, SSE4.2, AVX and AVX2 code, and no
    difference in encoding speed."""
    options = {"crf": str(int(crf)), "preset": preset}
    if X264_ASM:
        options["x264-params"] = f"asm={X264_ASM}"
    return options


_converters = threading.local()


def convert(frame, format: str):
    """`frame` in another pixel format, by this thread's converter to that format. PyAV's own
    frame.reformat/to_ndarray(format=) make a new converter for every frame: swscale set up, and
    its slice threads started and stopped, each time -- ~0.7 ms of a 640x360 frame, half the
    conversion. Kept between frames (one thread, the same result) it is set up once."""
    from av.video.reformatter import VideoReformatter
    cache = _converters.__dict__
    if format not in cache:
        cache[format] = VideoReformatter()
    try:
        return cache[format].reformat(frame, format=format, threads=1)
    except TypeError:  # an older PyAV: no threads argument (its swscale starts no slice threads)
        return cache[format].reformat(frame, format=format)


def yuv_frame(rgb: np.ndarray):
    """An RGB image as the yuv420p frame x264 codes (odd sizes edge-padded to even). The closed
    loop converts each image once and encodes it in several trials."""
    import av
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), "yuv420p")


class _H264Stream:
    """A libx264 (yuv420p) stream in an open PyAV container: odd sizes are edge-padded to even,
    and the H.264 payload (sum of packet sizes) is counted. With a QualityMeter, what a decoder
    shows is measured against the references given to write().

    One x264 thread for every stream, written or trial: x264's bytes depend on its thread count, so
    video.mp4 is then the same on every machine and exactly what the closed loop's trials predict.
    Measured here (720p x2, 100 frames): 2 % fewer bytes than x264's own choice of threads, and the
    same CPU and wall time (the other stages keep both cores busy)."""

    def __init__(self, container, fps: float, crf: int, preset: str, meter=None):
        self.container, self.meter = container, meter
        self.stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.thread_count = 1
        self.stream.options = x264_options(crf, preset)
        self.frames = self.payload = 0
        self.first_packet = None  # bytes of the stream's first packet: its intra (IDR) frame

    def write(self, image, regions=(), reference=None) -> None:
        """One frame, RGB (or as yuv_frame made it); `regions` ((x, y, w, h), qoffset) are x264
        quantiser offsets (with_roi_offsets); `reference` (RGB, ROI bool) is what the QualityMeter
        compares the decoded frame with."""
        frame = image if not isinstance(image, np.ndarray) else yuv_frame(image)
        if self.frames == 0:
            self.stream.width, self.stream.height = frame.width, frame.height
        frame.pts = None  # the encoder numbers frames; a frame encoded before still holds its number
        if regions:
            frame.pts, frame.time_base = self.frames, self.stream.codec_context.time_base or fractions.Fraction(1, 25)
            frame = with_roi_offsets(frame, regions)
            frame.pts = None  # let the encoder number frames as it does without ROI
        if self.meter is not None:
            self.meter.expect(*reference)
        self._mux(frame)
        self.frames += 1

    def flush(self) -> None:
        self._mux(None)

    def _mux(self, frame) -> None:
        for packet in self.stream.encode(frame):
            self.payload += packet.size
            if self.first_packet is None:
                self.first_packet = packet.size
            if self.meter is not None:
                self.meter.decode(packet, self.stream.codec_context)
            self.container.mux(packet)


class H264Writer:
    """Stream RGB frames into an H.264 (libx264, yuv420p) mp4 at a given CRF and fps.

    Written to a hidden temp file and renamed on close(), so an interrupted run leaves no
    truncated video under the final name. Odd sizes are edge-padded to even (mp4 only).
    """

    def __init__(self, path, fps: float, crf: int = 23, preset: str = "veryfast", measure: bool = False):
        import av
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.container = av.open(str(self.tmp), mode="w")
        self.meter = QualityMeter() if measure else None
        self.encoder = _H264Stream(self.container, fps, crf, preset, meter=self.meter)

    def write(self, rgb: np.ndarray, regions=(), reference=None) -> None:
        self.encoder.write(rgb, regions, reference)

    def quality(self) -> dict:
        """ROI-PSNR and background PSNR of the decoded stream against the references (after close)."""
        return self.meter.finish()

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


def encode_h264_bytes(frames, fps: float, crf: int, preset: str = "veryfast",
                      regions=None) -> tuple[int, list[np.ndarray]]:
    """Encode frames with libx264 in memory (for evaluation): return (bitstream bytes, decoded RGB).

    Bytes are the H.264 payload (sum of packet sizes), not the mp4 file: the container's fixed
    ~1 kB would otherwise swamp small clips. `regions`: per frame, x264 quantiser regions
    (see with_roi_offsets).
    """
    import av
    h, w = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        encoder = _H264Stream(container, fps, crf, preset)
        for i, f in enumerate(frames):
            encoder.write(f, regions[i] if regions is not None else ())
        encoder.flush()
        size = encoder.payload
    buffer.seek(0)
    with av.open(buffer, format="mp4") as c:
        decoded = [convert(f, "rgb24").to_ndarray()[:h, :w] for f in c.decode(video=0)]
    return size, decoded


def measure_h264(frames, references, fps: float, crf: int, preset: str = "veryfast", regions=None) -> dict:
    """Encode frames in memory as encode_h264_bytes does and measure what a decoder shows against
    `references` ((RGB, ROI bool) per frame): {"bytes", "intra_bytes" (the first, intra-coded
    frame's), "roi_psnr", "bg_psnr"}."""
    import av
    meter = QualityMeter()
    with av.open(io.BytesIO(), mode="w", format="mp4") as container:
        encoder = _H264Stream(container, fps, crf, preset, meter=meter)
        for i, (f, ref) in enumerate(zip(frames, references)):
            encoder.write(f, regions[i] if regions is not None else (), ref)
        encoder.flush()
    return {"bytes": encoder.payload, "intra_bytes": encoder.first_packet or 0, **meter.finish()}
