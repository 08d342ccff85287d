import gc
import threading

import cv2
import numpy as np
import pytest

from roi_sources import (KeyframeSource, MaskFolderSource, MotionSource, RoiOptions, StillCameraUnion, YoloSegmenter,
                         check_roi_options, class_ids, full_size, full_size_share, load_yolo, make_roi_source)
from video_io import write_png
from errors import UserError
from conftest import moving_square_frames


class StubSegmenter:
    """Returns the true mask of the frame it is given; counts its calls."""

    def __init__(self, masks):
        self.masks, self.calls, self.seen = masks, 0, []

    def segment(self, frame):
        i = next(k for k, f in enumerate(self.frames) if np.array_equal(f, frame))
        self.calls += 1
        self.seen.append(i)
        return self.masks[i].astype(np.float32) / 255


def test_keyframes_run_the_segmenter_every_n_frames_and_flow_carries_the_mask():
    frames, masks = moving_square_frames(n=7, h=96, w=128)
    seg = StubSegmenter(masks)
    seg.frames = frames
    src = KeyframeSource(seg, interval=3, flow_width=128)
    got = [src.mask(f) for f in frames]
    assert seg.seen == [0, 3, 6]
    for t in (1, 2, 4, 5):  # warped, between keyframes: still on the moved square
        truth = masks[t] > 0
        assert (got[t][truth] > 0.5).mean() > 0.7, t
    with pytest.raises(UserError):
        KeyframeSource(seg, interval=0)


class ThreadNoting(StubSegmenter):
    """StubSegmenter that also notes the thread each call ran on."""

    def segment(self, frame):
        self.threads = getattr(self, "threads", []) + [threading.current_thread().name]
        return super().segment(frame)


def masks_read_ahead(src, frames):
    """Each frame's mask the way inference reads them: announced `src.lookahead` frames ahead; and
    the keyframes whose segmentation was under way when each mask was asked for."""
    for f in frames[: src.lookahead]:
        src.announce(f)
    out, under_way = [], []
    for i, f in enumerate(frames):
        if i + src.lookahead < len(frames):
            src.announce(frames[i + src.lookahead])
        under_way.append(sorted(getattr(src, "detector", src).pending))
        out.append(src.mask(f))
    return out, under_way


def test_announced_keyframes_are_segmented_on_the_detectors_thread_with_the_same_masks():
    frames, masks = moving_square_frames(n=8, h=96, w=128)
    plain, ahead = StubSegmenter(masks), ThreadNoting(masks)
    plain.frames = ahead.frames = frames
    src = KeyframeSource(plain, interval=3, flow_width=128)
    expected = [src.mask(f) for f in frames]
    src = KeyframeSource(ahead, interval=3, flow_width=128)
    assert src.lookahead == 3
    got, under_way = masks_read_ahead(src, frames)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    # every keyframe within the look-ahead is being segmented before its mask is asked for
    assert under_way == [[k for k in (0, 3, 6) if i <= k <= i + 3] for i in range(8)]
    assert ahead.seen == [0, 3, 6] and src.runs == 3 and not src.pending
    assert all(name.startswith("detector") for name in ahead.threads)


def test_a_detector_error_on_its_thread_is_raised_where_the_mask_is_asked_for():
    class Failing:
        def segment(self, frame):
            raise RuntimeError("model failed")
    src = KeyframeSource(Failing(), interval=2)
    frame = np.zeros((32, 32, 3), np.uint8)
    src.announce(frame)
    with pytest.raises(RuntimeError, match="model failed"):
        src.mask(frame)


def test_skipping_quiet_keyframes_segments_ahead_only_while_things_move():
    frames, truth = parked_then_moving_frames()
    src = StillCameraUnion(KeyframeSource(RedSquareSegmenter(), interval=5), skip_quiet=True)
    got, under_way = masks_read_ahead(src, frames)
    ahead = sorted({k for keys in under_way for k in keys})
    # 0 and 5 are read before anything is known (5 is then carried: the one unused run); parked, the
    # view is quiet and nothing is segmented ahead (10-25); once the square has driven off (frame 20)
    # keyframes are segmented ahead again; YOLO's runs are those without reading ahead
    assert ahead == [0, 5, 30, 35]
    assert all(g[square].mean() > 0.9 for g, square in zip([m > 0.5 for m in got], truth))
    assert src.detector.runs == 4


def test_yolo_architecture_from_yaml_segments_offline():
    model = load_yolo("yolov8n-seg.yaml")  # random weights: the real code path, no download
    seg = YoloSegmenter(model, "person,car", imgsz=64)
    assert seg.classes == [0, 2]
    mask = seg.segment(np.zeros((48, 80, 3), np.uint8))
    assert mask.shape == (48, 80) and mask.dtype == np.float32
    with pytest.raises(UserError, match="unknown class 'unicorn'"):
        class_ids(model, "person,unicorn")


def test_mask_folder_matches_frames_by_name(tmp_path):
    write_png(tmp_path / "m" / "b.png", np.full((4, 6), 255, np.uint8))
    write_png(tmp_path / "m" / "a.png", np.zeros((4, 6), np.uint8))
    src = MaskFolderSource(tmp_path / "m", ["a.jpg", "b.jpg"])
    frame = np.zeros((8, 12, 3), np.uint8)
    # paired by name, not by order: a skipped frame never shifts the masks
    assert src.mask(frame, "b.jpg").min() == 1 and src.mask(frame, "a.jpg").max() == 0
    assert src.mask(frame, "a.jpg").shape == (8, 12)
    with pytest.raises(UserError, match="no mask for frame 'c.jpg'"):
        src.mask(frame, "c.jpg")
    with pytest.raises(UserError, match="no mask for frame 'c.jpg'"):  # checked before anything runs
        MaskFolderSource(tmp_path / "m", ["a.jpg", "c.jpg"])
    with pytest.raises(UserError, match="--masks_dir"):
        make_roi_source(RoiOptions(roi_source="masks", masks_dir=tmp_path / "missing"))


class Blind:
    """A detector that finds nothing."""

    def mask(self, frame, name=None):
        return np.zeros(frame.shape[:2], np.float32)


def test_on_a_still_camera_what_moves_is_roi_even_when_the_detector_misses_it():
    frames, masks = moving_square_frames(n=12, h=192, w=256)
    src = StillCameraUnion(Blind())
    got = [src.mask(f) for f in frames]
    last, truth = got[-1] > 0.5, masks[-1] > 0
    assert (last & truth).sum() > 0.5 * truth.sum() and last.mean() < 0.05


def test_motion_beside_the_detector_gives_what_one_after_the_other_gives_and_leaves_no_thread():
    frames, _ = moving_square_frames(n=12, h=192, w=256)  # a still view, little of it moving: the union holds
    before = set(threading.enumerate())
    src = StillCameraUnion(Blind())
    alone = MotionSource()
    for f in frames:
        assert np.array_equal(src.mask(f), alone.mask(f))
    mine = [t for t in threading.enumerate() if t not in before and t.name.startswith("motion")]
    assert len(mine) == 1
    del src
    gc.collect()
    mine[0].join(timeout=5)
    assert not mine[0].is_alive()


def test_when_much_of_a_still_view_moves_the_detector_masks_stand_alone():
    """Water, smoke, a crowd: motion over a large share of the view is the scene, not a missed object."""
    frames, _ = moving_square_frames(n=40, h=192, w=256)
    rng = np.random.default_rng(5)
    for f in frames:  # water below: brightness swells, few trackable corners
        swell = cv2.resize(rng.normal(0, 40, (3, 6)).astype(np.float32), (256, 96), interpolation=cv2.INTER_CUBIC)
        f[96:] = np.clip(f[96:] + swell[..., None], 0, 255).astype(np.uint8)
    src = StillCameraUnion(Blind())
    got = [src.mask(f) for f in frames]
    assert all(g.max() == 0 for g in got[10:]) and src.moving_share > src.MAX_MOVING_SHARE


def test_on_a_moving_camera_the_detector_masks_stand_alone():
    rng = np.random.default_rng(3)
    scene = cv2.resize(rng.integers(30, 220, (24, 64, 3)).astype(np.uint8), (512, 96), interpolation=cv2.INTER_CUBIC)
    frames = [scene[:, 8 * t:8 * t + 128].copy() for t in range(20)]
    src = StillCameraUnion(Blind())
    got = [src.mask(f) for f in frames]
    assert all(g.max() == 0 for g in got[4:]) and src.motion.drift > src.STILL_DRIFT


def test_a_detector_is_united_with_motion_unless_roi_motion_is_off():
    model = load_yolo("yolov8n-seg.yaml")
    source, used = make_roi_source(RoiOptions(roi_source="yolo", seg_imgsz=64), yolo_model=model)
    assert isinstance(source, StillCameraUnion) and used == "yolo+motion"
    source, used = make_roi_source(RoiOptions(roi_source="yolo", seg_imgsz=64, roi_motion="off"), yolo_model=model)
    assert isinstance(source, KeyframeSource) and used == "yolo"
    with pytest.raises(UserError, match="--roi_motion"):
        check_roi_options(RoiOptions(roi_motion="maybe"))


def test_a_class_typo_is_said_even_when_the_weights_are_missing(tmp_path, capsys):
    missing = str(tmp_path / "missing-seg.pt")
    for classes, said in [("persn, car", True), ("person,traffic light", False), ("all", False)]:
        _, used = make_roi_source(RoiOptions(roi_source="auto", seg_model_path=missing, roi_classes=classes))
        warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("WARNING")]
        assert used == "motion" and any("missing-seg.pt" in w for w in warnings)
        typo = [w for w in warnings if "--roi_classes" in w]
        assert bool(typo) == said and (not said or "--roi_classes: persn is no COCO class" in typo[0])


@pytest.mark.parametrize("size", [(720, 1280), (481, 853), (1080, 1920)])
def test_moving_share_counted_at_work_resolution_equals_the_full_size_mean(size):
    """The still-camera union decides from the share of the view that moves without making the
    full-size motion mask: the very float numpy's mean of that mask gives (it is compared with a
    threshold, so anything else could flip a decision)."""
    rng = np.random.default_rng(0)
    h, w = size
    for density in (0.0, 0.01, 0.05, 0.3, 1.0):
        small = (rng.random((round(h * 320 / w), 320)) < density).astype(np.float32)
        assert full_size_share(small, size) == float(full_size(small, size).mean())


RED = [230, 60, 40]


def red_pixels(frame):
    return np.all(frame == RED, axis=-1)


class RedSquareSegmenter:
    """Finds the red square of parked_then_moving_frames; counts its calls."""
    calls = 0

    def segment(self, frame):
        self.calls += 1
        return red_pixels(frame).astype(np.float32)


def parked_then_moving_frames(n=40, start=20, h=192, w=256):
    """A still camera: a red square parked for `start` frames, then driving off to the right."""
    background = moving_square_frames(n=1, h=h, w=w)[0][0].copy()
    background[10:26, 4:20] = background[10:26, 30:46]  # the conftest square painted over
    out, truth = [], []
    for t in range(n):
        x = 40 + 4 * max(0, t - start)
        f = background.copy()
        f[60:92, x:x + 32] = RED
        out.append(f)
        truth.append(red_pixels(f))
    return out, truth


def test_a_quiet_keyframe_carries_the_mask_but_the_segmenter_still_runs_every_max_quiet_frames():
    frames, truth = parked_then_moving_frames(n=20, start=99)  # nothing moves
    seg = RedSquareSegmenter()
    src = KeyframeSource(seg, interval=3, flow_width=128, max_quiet=7)
    ran = []
    for t, (f, square) in enumerate(zip(frames, truth)):
        got = src.mask(f, quiet=True)
        ran += [t] if src.detected else []
        assert (got > 0.5).sum() == square.sum(), t
    assert ran == [0, 9, 18] and seg.calls == src.runs == 3
    every = KeyframeSource(RedSquareSegmenter(), interval=1, max_quiet=4)  # no flow kept: the mask itself stays
    masks = [every.mask(f, quiet=True) for f in frames[:6]]
    assert every.runs == 2 and all(np.array_equal(m, masks[0]) for m in masks)


@pytest.mark.parametrize("skip", [False, True])
def test_skipping_quiet_keyframes_runs_the_detector_once_things_move_and_keeps_them_covered(skip):
    frames, truth = parked_then_moving_frames()
    src = StillCameraUnion(KeyframeSource(RedSquareSegmenter(), interval=5), skip_quiet=skip)
    ran = []
    for t, (f, square) in enumerate(zip(frames, truth)):
        got = src.mask(f) > 0.5
        ran += [t] if src.detector.detected else []
        assert got[square].mean() > 0.9, t  # parked, carried or moving: covered on every frame
    # parked (frames 0-19): one run; moving from frame 20: every keyframe after it has seen motion
    assert ran == ([0, 25, 30, 35] if skip else [0, 5, 10, 15, 20, 25, 30, 35])


def test_skipping_quiet_keyframes_needs_roi_motion(capsys):
    model = load_yolo("yolov8n-seg.yaml")
    source, _ = make_roi_source(RoiOptions(roi_source="yolo", seg_imgsz=64, skip_quiet_keyframes="on"), yolo_model=model)
    assert source.skip_quiet
    make_roi_source(RoiOptions(roi_source="yolo", seg_imgsz=64, skip_quiet_keyframes="on", roi_motion="off"),
                    yolo_model=model)
    assert "--skip_quiet_keyframes is ignored with --roi_motion off" in capsys.readouterr().err
    with pytest.raises(UserError, match="--skip_quiet_keyframes"):
        check_roi_options(RoiOptions(skip_quiet_keyframes="yes"))
