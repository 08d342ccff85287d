"""The real COCO segmenter on real footage (DAVIS-2016), from ../shared beside the repo: the float
Ultralytics checkpoint users have (yolov8n-seg-dq.pt, the stand-in for yolov8n-seg.pt) and the int8
ONNX export (the weak-detector case). A user's clone has no ../shared: these tests skip, saying why."""
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inference
import roi_sources
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


@functools.lru_cache(maxsize=None)
def loaded(path):
    return load_yolo(str(path))


@pytest.fixture(scope="module")
def yolo():
    return loaded(SEG)


@pytest.mark.parametrize("model, size, share, seq, cls", [
    (SEG, 320, 0.7, "horsejump-high", "person,horse"), (SEG, 320, 0.7, "drift-straight", "car"),
    (SEG, 320, 0.7, "dog", "dog"), (PT, 640, 0.8, "horsejump-high", "person,horse"),
    (PT, 640, 0.8, "drift-straight", "car"), (PT, 640, 0.8, "libby", "dog")])
def test_segmenters_find_the_annotated_object_at_their_default_size(model, size, share, seq, cls):
    """The int8 export at its fixed 320, the float .pt at Ultralytics' own 640 (it takes any size)."""
    frame, truth = davis_frame(seq)
    seg = YoloSegmenter(loaded(model), cls)
    assert seg.imgsz == size
    mask = seg.segment(frame) > 0
    assert iou(mask, truth) > 0.5, (seq, iou(mask, truth))
    assert (mask & truth).sum() > share * truth.sum()  # on the object, not beside it
    nothing = YoloSegmenter(loaded(model), "toothbrush").segment(frame)  # a class that is not there
    assert nothing.max() == 0


def test_segmenter_skips_the_torchvision_import_and_finds_the_same_masks():
    """Without Ultralytics' warm-up torchvision is never imported (2-3 s of start-up); its NMS is then
    Ultralytics' own, which must find exactly what torchvision's finds. A fresh process, because
    whether torchvision is imported decides which NMS runs."""
    code = f"""
import sys
import numpy as np
from roi_sources import YoloSegmenter, load_yolo
from tests.test_real_models import davis_frame
frames = [davis_frame(seq, i)[0] for seq in ("breakdance", "drift-straight", "libby") for i in (0, 20)]
seg = YoloSegmenter(load_yolo({str(PT)!r}), "all")
before = [seg.segment(f) for f in frames]
assert "torchvision" not in sys.modules
import torchvision
after = [seg.segment(f) for f in frames]
assert all(np.array_equal(a, b) for a, b in zip(before, after))
assert sum(a.sum() for a in before) > 0
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_a_pt_runs_in_onnx_runtime_with_its_own_masks_exported_once(tmp_path, monkeypatch):
    """--seg_runtime auto: the .pt is exported once into the cache (never beside the user's file),
    finds exactly the masks the .pt finds in PyTorch, and its session takes torch's thread count."""
    import torch
    monkeypatch.setattr(roi_sources, "ONNX_CACHE", tmp_path / "onnx")
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(PT, user / "mine.pt")
    in_torch, in_ort = load_yolo(str(user / "mine.pt")), load_yolo(str(user / "mine.pt"), runtime="auto")
    assert (in_torch.runtime, in_ort.runtime) == ("torch", "onnxruntime")
    assert [p.name for p in user.iterdir()] == ["mine.pt"]
    exported = list((tmp_path / "onnx").iterdir())
    assert len(exported) == 1 and exported[0].suffix == ".onnx"
    a, b = YoloSegmenter(in_torch, "all"), YoloSegmenter(in_ort, "all")
    for f in [davis_frame(seq, i)[0] for seq in ("breakdance", "libby") for i in (0, 10)]:
        assert np.array_equal(a.segment(f), b.segment(f))
    session = in_ort.predictor.model.backend.session
    assert session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    stamp = exported[0].stat().st_mtime_ns
    assert load_yolo(str(user / "mine.pt"), runtime="auto").runtime == "onnxruntime"
    assert list((tmp_path / "onnx").iterdir()) == exported and exported[0].stat().st_mtime_ns == stamp


def test_a_failed_export_runs_the_pt_in_pytorch_with_one_line(tmp_path, monkeypatch, capsys):
    from ultralytics.engine.model import Model

    def fail(self, **kwargs):
        raise RuntimeError("exporter broke")
    monkeypatch.setattr(roi_sources, "ONNX_CACHE", tmp_path / "onnx")
    monkeypatch.setattr(Model, "export", fail)
    assert load_yolo(str(PT), runtime="auto").runtime == "torch"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not export" in err[0] and "--seg_runtime torch" in err[0]
    assert list((tmp_path / "onnx").iterdir()) == []  # nothing half-written left behind


def test_conflicting_imgsz_is_a_warning_not_a_crash(yolo, capsys):
    seg = YoloSegmenter(yolo, "person", imgsz=640)
    assert seg.imgsz == 320 and "--seg_imgsz 640 ignored" in capsys.readouterr().err


@pytest.mark.parametrize("model, seq, n, k, size, checked, spread", [
    (SEG, "breakdance", 6, 2, 320, (0, 3), 100),  # the audience are people too: no bound on the ROI's size
    (PT, "libby", 10, 5, 640, (0, 5, 7), 5)])
def test_inference_with_a_real_segmenter_end_to_end(tmp_path, model, seq, n, k, size, checked, spread):
    """inference.py --seg_model_path (the int8 export; the float .pt at its default size) on a real
    clip: keyframes and flow-warped frames keep the annotated object on the sharp path."""
    clip = tmp_path / seq
    clip.mkdir()
    for i in range(n):
        shutil.copy(DAVIS / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg", clip)
    out = tmp_path / "out"
    code = inference.main(["--input_dir", str(clip), "--output_dir", str(out), "--seg_model_path", str(model),
                           "--keyframe_interval", str(k), "--save_frames"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["roi_source"] == "yolo+motion" and report["frames"] == n and report["seg_imgsz"] == size
    assert report["trial_bytes_vs_area_pct"] is not None and report["roi_options"]["keyframe_interval"] == k
    assert report["seg_runtime"] == "onnxruntime"  # the .pt too: exported for ONNX Runtime by default
    assert (report["steady_fps"] or 0) > 0 if n > 8 else report["steady_fps"] is None  # after the 8-frame look-ahead
    for i in checked:
        soft = read_image_rgb(out / "masks" / f"{i:05d}.png")[..., 0] > 128
        truth = davis_frame(seq, i)[1][::2, ::2][: soft.shape[0], : soft.shape[1]]
        assert (soft & truth).sum() > 0.8 * truth.sum() and soft.mean() < spread * truth.mean(), i


def test_make_roi_source_uses_the_onnx_model():
    source, used = make_roi_source(RoiOptions(roi_source="yolo", seg_model_path=str(SEG), roi_classes="person"))
    frame, truth = davis_frame("breakdance", 10)  # the dancer (spectators are people too, not annotated)
    assert used == "yolo+motion" and ((source.mask(frame) > 0) & truth).sum() > 0.7 * truth.sum()
    assert np.isfinite(source.mask(frame)).all()


def test_a_detector_given_as_the_segmenter_is_one_line(tmp_path, capsys):
    """The detection export has one output, a segmenter two: refused before anything runs."""
    clip = tmp_path / "clip"
    clip.mkdir()
    shutil.copy(DAVIS / "JPEGImages" / "480p" / "libby" / "00000.jpg", clip)
    detector = SHARED / "models" / "yolov8n_int8.onnx"
    code = inference.main(["--input_dir", str(clip), "--output_dir", str(tmp_path / "out"),
                           "--seg_model_path", str(detector)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "a detection model" in err and not (tmp_path / "out").exists()
