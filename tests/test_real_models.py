"""The real COCO segmenter on real footage (DAVIS-2016), from ../shared beside the repo: the float
Ultralytics checkpoint users have (yolov8n-seg-dq.pt, the stand-in for yolov8n-seg.pt) and the int8
ONNX export (the weak-detector case). A user's clone has no ../shared: these tests skip, saying why."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import inference
from roi_sources import RoiOptions, YoloSegmenter, load_yolo, make_roi_source, read_mask_file
from video_io import read_image_rgb

SHARED = Path(__file__).resolve().parents[2] / "shared"
SEG = SHARED / "models" / "yolov8n-seg_int8.onnx"
PT = SHARED / "models" / "yolov8n-seg-dq.pt"
DAVIS = SHARED / "data" / "davis2016"
pytestmark = pytest.mark.skipif(not (SEG.is_file() and PT.is_file() and DAVIS.is_dir()),
                                reason=f"real models and footage not found in {SHARED} (developers and CI only)")


def davis_frame(seq: str, i: int = 0):
    frame = read_image_rgb(DAVIS / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg")
    return frame, read_mask_file(DAVIS / "Annotations" / "480p" / seq / f"{i:05d}.png") > 0


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.fixture(scope="module")
def yolo():
    return load_yolo(str(SEG))


@pytest.mark.parametrize("seq, cls", [("horsejump-high", "person,horse"), ("drift-straight", "car"), ("dog", "dog")])
def test_int8_segmenter_finds_the_annotated_object(yolo, seq, cls):
    frame, truth = davis_frame(seq)
    seg = YoloSegmenter(yolo, cls)
    assert seg.imgsz == 320  # the export's fixed input size, read from the model
    mask = seg.segment(frame) > 0
    assert iou(mask, truth) > 0.5, (seq, iou(mask, truth))
    assert (mask & truth).sum() > 0.7 * truth.sum()  # on the object, not beside it
    nothing = YoloSegmenter(yolo, "toothbrush").segment(frame)  # a class that is not there
    assert nothing.max() == 0


def test_conflicting_imgsz_is_a_warning_not_a_crash(yolo, capsys):
    seg = YoloSegmenter(yolo, "person", imgsz=640)
    assert seg.imgsz == 320 and "--seg_imgsz 640 ignored" in capsys.readouterr().err


def test_inference_with_the_real_segmenter_end_to_end(tmp_path):
    clip = tmp_path / "breakdance"
    clip.mkdir()
    for i in range(6):
        shutil.copy(DAVIS / "JPEGImages" / "480p" / "breakdance" / f"{i:05d}.jpg", clip)
    out = tmp_path / "out"
    code = inference.main(["--input_dir", str(clip), "--output_dir", str(out), "--roi_source", "yolo",
                           "--seg_model_path", str(SEG), "--keyframe_interval", "2", "--save_frames"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["roi_source"] == "yolo" and report["frames"] == 6
    assert report["area_video_bytes"] > 0 and report["roi_options"]["keyframe_interval"] == 2
    for i in (0, 3):  # a keyframe and a flow-warped frame: the dancer is on the sharp path
        soft = read_image_rgb(out / "masks" / f"{i:05d}.png")[..., 0] > 128
        truth = davis_frame("breakdance", i)[1][::2, ::2][: soft.shape[0], : soft.shape[1]]
        assert (soft & truth).sum() > 0.8 * truth.sum(), i


def test_make_roi_source_uses_the_onnx_model():
    source, used = make_roi_source(RoiOptions(roi_source="yolo", seg_model_path=str(SEG), roi_classes="person"))
    frame, truth = davis_frame("breakdance", 10)  # the dancer (spectators are people too, not annotated)
    assert used == "yolo" and ((source.mask(frame) > 0) & truth).sum() > 0.7 * truth.sum()
    assert np.isfinite(source.mask(frame)).all()


@pytest.fixture(scope="module")
def yolo_pt():
    return load_yolo(str(PT))


@pytest.mark.parametrize("seq, cls", [("horsejump-high", "person,horse"), ("drift-straight", "car"), ("libby", "dog")])
def test_float_pt_segmenter_finds_the_annotated_object_at_its_default_size(yolo_pt, seq, cls):
    frame, truth = davis_frame(seq)
    seg = YoloSegmenter(yolo_pt, cls)
    assert seg.imgsz == 640  # a .pt takes any size: Ultralytics' own default
    mask = seg.segment(frame) > 0
    assert iou(mask, truth) > 0.5, (seq, iou(mask, truth))
    assert (mask & truth).sum() > 0.8 * truth.sum()


def test_inference_with_the_float_pt_end_to_end(tmp_path):
    """inference.py --seg_model_path yolov8n-seg-dq.pt on a real clip: the masks land on the object."""
    clip = tmp_path / "libby"
    clip.mkdir()
    for i in range(10):
        shutil.copy(DAVIS / "JPEGImages" / "480p" / "libby" / f"{i:05d}.jpg", clip)
    out = tmp_path / "out"
    code = inference.main(["--input_dir", str(clip), "--output_dir", str(out), "--seg_model_path", str(PT),
                           "--keyframe_interval", "5", "--save_frames"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["roi_source"] == "yolo" and report["frames"] == 10 and report["seg_imgsz"] == 640
    for i in (0, 5, 7):  # keyframes and a flow-warped frame
        soft = read_image_rgb(out / "masks" / f"{i:05d}.png")[..., 0] > 128
        truth = davis_frame("libby", i)[1][::2, ::2][: soft.shape[0], : soft.shape[1]]
        assert (soft & truth).sum() > 0.8 * truth.sum() and soft.mean() < 5 * truth.mean(), i
