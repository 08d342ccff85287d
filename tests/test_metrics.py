import json
"""The evaluation's measurements on constructed cases whose answers are known."""
import math

import cv2

import numpy as np
import pytest

import metrics
from video_io import encode_h264_bytes, quant_regions, roi_rectangles


def test_detection_f1_known_answers():
    boxes = [(0, 10, 10, 50, 50, 0.9), (2, 100, 100, 160, 140, 0.8)]
    assert metrics.f1_score(*metrics.detection_f1(boxes, boxes)) == 1.0
    tp, fp, fn = metrics.detection_f1(boxes, boxes[:1])  # one of two boxes missed
    assert (tp, fp, fn) == (1, 0, 1) and math.isclose(metrics.f1_score(tp, fp, fn), 2 / 3)
    wrong_class = [(1, *boxes[0][1:])]
    assert metrics.detection_f1(boxes[:1], wrong_class) == (0, 1, 1)
    shifted = [(0, 30, 30, 70, 70, 0.9)]  # IoU 400/2800 < 0.5
    assert metrics.detection_f1(boxes[:1], shifted) == (0, 1, 1)
    assert metrics.f1_score(0, 0, 0) == 1.0  # nothing there, nothing found


def test_mask_iou_known_answers():
    a = np.zeros((2, 10, 10), np.uint8)
    a[:, :, :5] = 1                      # left half
    b = np.zeros_like(a)
    b[:, :, 5:] = 1                      # right half
    assert metrics.mask_iou(a, a) == 1.0 and metrics.mask_iou(a, b) == 0.0
    c = np.zeros_like(a)
    c[:, :, :10] = 1                     # everything: IoU with the left half is 1/2
    assert math.isclose(metrics.mask_iou(a, c), 0.5)
    assert metrics.mask_iou(a * 0, b * 0) == 1.0  # nothing there, nothing found


def test_bd_rate_is_na_without_overlap_and_measured_with_it():
    rate = [1000, 2000, 4000, 8000]
    low, high = [30, 32, 34, 36], [40, 42, 44, 46]
    assert math.isnan(metrics.bd_rate(rate, low, rate, high))
    assert metrics.report_bd(float("nan"), low, high) == "n/a (no overlap: 30.0-36.0 vs 40.0-46.0 dB)"
    half = metrics.bd_rate(rate, low, [r / 2 for r in rate], low)  # same quality at half the bytes
    assert math.isclose(half, -50.0, abs_tol=0.5)
    assert math.isnan(metrics.bd_rate(rate, low, rate, [35.5, 37, 39, 41]))  # 0.5 dB shared: n/a
    # points out of rate order (a choice that changes with the CRF) measure as the sorted curve
    shuffled = [2, 0, 3, 1]
    assert math.isclose(metrics.bd_rate(rate, low, [rate[i] / 2 for i in shuffled], [low[i] for i in shuffled]),
                        half)
    falling = [36, 34, 32, 30]  # quality that drops as the rate rises: no number, and no false "no overlap"
    assert math.isnan(metrics.bd_rate(rate, low, rate, falling))
    assert metrics.report_bd(float("nan"), low, falling) == "n/a (quality does not rise with the rate)"


def test_bytes_at_quality_interpolates_and_says_when_it_cannot():
    assert metrics.bytes_at(0.9, [100, 200, 300], [0.8, 0.9, 1.0]) == 200
    assert math.isclose(metrics.bytes_at(0.85, [100, 200], [0.8, 0.9]), 150)
    assert math.isnan(metrics.bytes_at(0.99, [100, 200], [0.8, 0.9]))


def test_roi_rectangles_cover_the_mask_on_the_macroblock_grid():
    mask = np.zeros((50, 70), bool)
    mask[5:20, 10:40] = True
    mask[30:49, 60:70] = True
    rects = roi_rectangles(mask)
    covered = np.zeros_like(mask)
    for x, y, w, h in rects:
        assert x % 16 == 0 and y % 16 == 0
        covered[y:y + h, x:x + w] = True
    assert covered[mask].all() and covered.mean() < 0.7


def test_roi_offsets_reach_the_encoder():
    """x264 gives the ROI macroblocks a lower quantiser: more bytes, better ROI quality."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (128, 192, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    regions = [[((32, 32, 64, 64), -0.3)]] * len(frames)
    plain, d0 = encode_h264_bytes(frames, 25, 30)
    roi, d1 = encode_h264_bytes(frames, 25, 30, regions=regions)
    ref, inside = np.stack(frames), np.zeros((6, 128, 192, 3), bool)
    inside[:, 32:96, 32:96] = True
    q0, q1 = (metrics.masked_psnr(np.stack(d), ref, inside) for d in (d0, d1))
    assert roi > 1.1 * plain and q1 > q0 + 1.0
    assert encode_h264_bytes(frames, 25, 30, regions=[[]] * 6)[0] == plain  # no regions: unchanged


def test_first_region_wins_so_objects_keep_their_quality_under_a_coarser_background():
    """quant_regions lists the objects first: the frame-wide background offset does not reach them."""
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (128, 192, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    inside = np.zeros((6, 128, 192, 3), bool)
    inside[:, 32:96, 32:96] = True
    regions = [quant_regions([(32, 32, 64, 64)], 0.0, 8 / 51, 192, 128)] * 6
    plain, d0 = encode_h264_bytes(frames, 25, 30)
    coarse, d1 = encode_h264_bytes(frames, 25, 30, regions=regions)
    ref = np.stack(frames)
    roi0, roi1 = (metrics.masked_psnr(np.stack(d), ref, inside) for d in (d0, d1))
    bg0, bg1 = (metrics.masked_psnr(np.stack(d), ref, ~inside) for d in (d0, d1))
    assert coarse < 0.5 * plain and bg1 < bg0 - 0.2 and abs(roi1 - roi0) < 0.1, (coarse, plain, roi0, roi1, bg0, bg1)


def test_quality_meter_measures_the_stream_as_decoded(tmp_path):
    """In-stream decoding gives the same PSNR as decoding the finished file (odd size included)."""
    from video_io import FrameReader, H264Writer
    rng = np.random.default_rng(1)
    frames = [np.clip(rng.normal(128, 30, (63, 97, 3)), 0, 255).astype(np.uint8) for _ in range(10)]
    roi = np.zeros((63, 97), bool)
    roi[16:48, 16:48] = True
    w = H264Writer(tmp_path / "v.mp4", 25, crf=30, measure=True)
    for f in frames:
        w.write(f, (), (f, roi))
    w.close()
    m = w.quality()
    ref, d = np.stack(frames), np.stack([f[:63, :97] for f in FrameReader(tmp_path / "v.mp4")])
    inside = np.repeat(np.broadcast_to(roi, (10, 63, 97))[..., None], 3, -1)
    assert m["roi_psnr"] == pytest.approx(metrics.masked_psnr(d, ref, inside), abs=1e-3)
    assert m["bg_psnr"] == pytest.approx(metrics.masked_psnr(d, ref, ~inside), abs=1e-3)


def test_evaluate_refuses_crfs_it_cannot_use(capsys):
    """--crfs 99 (or fewer than the 4 points a BD-rate needs) is one line, not NaN columns."""
    import evaluate
    for bad in ("99", "18,23,28,99", "18,23,28", "a,b"):
        code = evaluate.main(["--input", "nowhere.mp4", "--crfs", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "--crfs" in err, (bad, err)
    code = evaluate.main(["--input", "nowhere.mp4", "--methods", "area", "--segment", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--segment" in err, err


def test_summary_table_gives_per_clip_rows_and_the_median():
    import evaluate

    def method(bd, bg, f1, size=100):
        return {"bd_rate_vs_area": bd, "rd": [{"crf": 23, "bg_psnr": bg, "det_f1": f1, "bytes": size, "roi_psnr": 30,
                                               "ghost_s": size / 100, "bg_psnr_still": bg + 1}]}
    clip = lambda a, b, size, mode="end_to_end": {
        "roi_source": "yolo", "mask_iou_vs_gt": 0.5, "group": "moving", "mode": mode,
        "methods": {"model": method(a, 31.0, 0.9, size), "area": method(0.0, 33.0, 0.95),
                    "area+roi_qp": method(b, 33.5, 0.96)}}
    table = evaluate.summary_table({"x [end_to_end]": clip(-10.0, -5.0, 50), "y [end_to_end]": clip(-30.0, float("nan"), 80),
                                    "z [end_to_end]": clip(2.0, -1.0, 100), "x [oracle]": clip(-50.0, -40.0, 40, "oracle")})
    rows = table.strip().splitlines()
    assert len(rows) == 2 + 4 + 2 and "yolo (0.50)" in rows[2] and "n/a" in rows[3]
    assert rows[2].split("|")[3:6] == [" -50.0% ", " 30.00 vs 30.00 ", " 31.0 vs 33.0 "]  # video.mp4 vs area @23
    assert rows[2].split("|")[-3:-1] == [" 32.0 vs 34.0 ", " 0.5 s vs 1.0 s "]  # static cameras' references
    # medians per group and mode: bytes of three, model BD of three, roi_qp of the two measured; oracle apart
    cells = rows[-2].split("|")
    assert rows[-2].startswith("| **median, moving end_to_end**") and cells[3] == " -20.0% (3) "
    assert cells[6:8] == [" -10.0% (3) ", " -3.0% (2) "] and cells[4:6] == [" +0.0 dB (3) ", " -2.0 dB (3) "]
    assert rows[-1].startswith("| **median, moving oracle**") and rows[-1].split("|")[6:8] == [" -50.0% (1) ", " -40.0% (1) "]


def test_quality_at_interpolates_in_log_bytes_and_refuses_to_extrapolate():
    assert metrics.quality_at(100, [400, 50, 200], [0.9, 0.5, 0.7]) == pytest.approx(0.6)  # halfway in log2
    assert np.isnan(metrics.quality_at(10, [50, 200], [0.5, 0.7]))
    assert np.isnan(metrics.quality_at(500, [50, 200], [0.5, 0.7]))


def test_an_interrupted_evaluation_continues_where_it_stopped(tmp_path, monkeypatch, frame_folder):
    """Each clip's result is stored as it is measured; the same command again reuses it."""
    import evaluate
    args = ["--input", str(frame_folder), "--gt_masks", str(tmp_path / "clip_masks"), "--roi_source", "masks",
            "--masks_dir", str(tmp_path / "clip_masks"), "--methods", "area,bicubic", "--detector_path", "none",
            "--output_dir", str(tmp_path / "eval")]
    assert evaluate.main(args) == 0
    first = json.loads((tmp_path / "eval" / "results.json").read_text())["clips"]
    assert list((tmp_path / "eval" / "clips").glob("*.json"))

    def refuse(*a, **k):
        raise AssertionError("measured again")
    monkeypatch.setattr(evaluate, "evaluate_clip", refuse)
    assert evaluate.main(args) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["clips"] == first
    with pytest.raises(AssertionError, match="measured again"):  # another output folder: measured anew
        evaluate.main(args[:-1] + [str(tmp_path / "other")])


def test_longest_ghost_counts_a_held_object_and_not_a_simplified_background():
    """A square that leaves but stays in the output for 30 frames (1.2 s at 25 fps) is a ghost;
    a blurred background with the square leaving on time is none."""
    rng = np.random.default_rng(0)
    ref = rng.integers(60, 200, (50, 64, 64, 3)).astype(np.uint8)
    ref[:20, 16:32, 16:32] = 250  # the object is there for 20 frames, then gone
    held = ref.copy()
    held[20:50, 16:32, 16:32] = 250
    assert metrics.longest_ghost(held, ref, 25.0) == pytest.approx(30 / 25)
    blurred = np.stack([cv2.GaussianBlur(f, (7, 7), 3) for f in ref])
    blurred[:20, 16:32, 16:32] = 250  # objects stay sharp; the background is simplified
    assert metrics.longest_ghost(blurred, ref, 25.0) < 0.1


def test_moving_masks_find_what_moves_despite_the_camera_exposure():
    rng = np.random.default_rng(1)
    base = rng.integers(40, 200, (72, 96, 3)).astype(np.int16)
    frames, truth = [], []
    for t in range(12):
        f = base + 3 * t + rng.normal(0, 3, base.shape)  # exposure drifts by 33 levels over the clip
        x = 8 + 6 * t
        f[20:40, x:x + 16] = 255
        m = np.zeros(base.shape[:2], bool)
        m[20:40, x:x + 16] = True
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
        truth.append(m)
    found = metrics.moving_masks(frames)
    for f, m in zip(found, truth):
        assert f[m].mean() > 0.95           # the object is found
        assert f[~m].mean() < 0.15          # the background is not (only the grown border)


def test_still_plate_keeps_area_on_the_objects_and_the_temporal_median_elsewhere():
    """The ceiling row of evaluate.py: the objects (grown by a few output pixels) come from area
    downscaling of the current frame, every other pixel from the clip's temporal median."""
    import evaluate
    from video_io import temporal_median
    rng = np.random.default_rng(2)
    base = rng.integers(40, 200, (64, 96, 3)).astype(np.int16)
    frames, masks = [], []
    for t in range(9):
        f = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)  # sensor noise
        f[16:32, 8 * t:8 * t + 16] = 250
        m = np.zeros(base.shape[:2], np.uint8)
        m[16:32, 8 * t:8 * t + 16] = 1
        frames.append(f)
        masks.append(m)
    out = evaluate.still_plate(frames, masks, 2)
    area = metrics.resize_all(frames, 2)
    plate = temporal_median(area)
    for o, a, m in zip(out, area, masks):
        core = metrics.block_max(m, 2) > 0
        far = cv2.dilate(core.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
        assert np.array_equal(o[core], a[core])
        assert np.array_equal(o[far], plate[far])
        assert not np.array_equal(o[far], a[far])  # the noise is gone there
