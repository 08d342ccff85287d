"""Many videos through Ray (inference.py --ray local): each result exactly as a single run writes
it, a corrupt video recorded while the others finish, nothing partial left, reruns resume."""
import csv
import json

import pytest

import inference
from checkpoint import save as save_checkpoint
from conftest import moving_square_frames
from roi_downsampler import DownsamplerConfig, ROIDownsampler
from video_io import read_image_rgb, write_png

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    ckpt = root / "x2.pth"
    save_checkpoint(ckpt, ROIDownsampler(DownsamplerConfig(scale_factor=2)))
    for k, name in enumerate(("a", "b", "c")):
        frames, _ = moving_square_frames(n=6, seed=k)
        for i, f in enumerate(frames):
            write_png(root / "clips" / name / f"{i:03d}.png", f)
    (root / "clips" / "b" / "003.png").write_bytes(b"not an image")  # the corrupt one
    common = ["--checkpoint_path", str(ckpt), "--roi_source", "motion", "--save_frames", "--threads", "1"]
    return root, common


def test_ray_batch_isolates_failures_matches_single_runs_and_resumes(batch, capsys):
    root, common = batch
    out = root / "out"
    assert inference.main(["--input_dir", str(root / "clips"), "--output_dir", str(out), "--ray", "local",
                           *common]) == 1
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[n]["status"] for n in "abc"] == ["done", "failed", "done"]
    assert "003.png" in rows["b"]["error"] and "\n" not in rows["b"]["error"]
    assert int(rows["a"]["frames"]) == 6 and int(rows["a"]["video_bytes"]) > 0
    assert not (out / "b").exists() and not [p for p in out.iterdir() if ".partial" in p.name]
    assert "1 failed" in capsys.readouterr().out

    single = root / "single_a"
    assert inference.main(["--input_dir", str(root / "clips" / "a"), "--output_dir", str(single), *common]) == 0
    for i in range(6):
        assert (read_image_rgb(out / "a" / "frames" / f"{i:05d}.png") ==
                read_image_rgb(single / "frames" / f"{i:05d}.png")).all()
    assert sorted(p.name for p in (out / "a").rglob("*")) == sorted(p.name for p in single.rglob("*"))

    before = (out / "a" / "video.mp4").stat().st_mtime_ns
    assert inference.main(["--input_dir", str(root / "clips"), "--output_dir", str(out), "--ray", "local",
                           *common]) == 1
    summary = {r["name"]: r for r in json.loads((out / "summary.json").read_text())}
    assert summary["a"]["status"] == summary["c"]["status"] == "skipped" and summary["b"]["status"] == "failed"
    assert (out / "a" / "video.mp4").stat().st_mtime_ns == before


def test_ray_batch_refuses_a_foreign_output_folder(batch, capsys):
    root, common = batch
    foreign = root / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert inference.main(["--input_dir", str(root / "clips"), "--output_dir", str(foreign), "--ray", "local",
                           *common]) == 2
    assert "did not write" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep"
