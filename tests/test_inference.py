import json

import numpy as np
import pytest

import inference
from checkpoint import save as save_checkpoint
from roi_downsampler import DownsamplerConfig, ROIDownsampler
from video_io import H264Writer, FrameReader, read_image_rgb, write_png
from conftest import moving_square_frames


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "x2.pth"
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    with __import__("torch").no_grad():  # a non-trivial model: background simplified, held
        model.analyzer.head[2].bias.zero_()
    save_checkpoint(path, model)
    return path


def run(args, capsys=None):
    code = inference.main([str(a) for a in args])
    err = capsys.readouterr().err if capsys else ""
    return code, err


def common(ckpt, out, extra=()):
    return ["--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "masks", "--save_frames", *extra]


def test_frame_folder_output_contract(tmp_path, frame_folder, ckpt):
    out = tmp_path / "out"
    code, _ = run(["--input_dir", frame_folder, *common(ckpt, out, ["--masks_dir", tmp_path / "clip_masks"])])
    assert code == 0
    frames = sorted((out / "frames").iterdir())
    masks = sorted((out / "masks").iterdir())
    assert [f.name for f in frames] == [f"{i:05d}.png" for i in range(6)] == [m.name for m in masks]
    assert read_image_rgb(frames[0]).shape == (24, 32, 3)
    assert read_image_rgb(masks[0]).shape[:2] == (24, 32)
    r = FrameReader(out / "video.mp4")
    assert len(list(r)) == 6 and (r.info.width, r.info.height) == (32, 24)
    report = json.loads((out / "report.json").read_text())
    assert report["roi_source"] == "masks" and report["frames"] == 6 and report["video_bytes"] > 0
    assert set(report["stage_fps"]) == {"read", "segment", "prepare", "downsample", "write"}
    assert report["overall_fps"] > 0 and report["steady_fps"] is None  # all 6 in the first output (8-frame look-ahead)
    assert len(report["parameters"]) == 6 and "bg_simplify" in report["parameters"][0]
    soft = read_image_rgb(masks[2])[..., 0]
    square = read_image_rgb(tmp_path / "clip_masks" / "frame2.png")[::2, ::2, 0] > 0
    assert (soft[square] >= 250).all()  # the moving square is fully on the sharp path


def test_default_output_is_the_video_and_its_report(tmp_path, frame_folder, ckpt, capsys):
    """No second encode by default: the last line gives the closed loop's estimate, and says so."""
    out = tmp_path / "out"
    code, _ = run(["--input_dir", frame_folder, "--output_dir", out, "--checkpoint_path", ckpt,
                   "--roi_source", "motion"])
    assert code == 0 and sorted(p.name for p in out.iterdir()) == [".roi_downsampler_result", "report.json", "video.mp4"]
    report = json.loads((out / "report.json").read_text())
    assert "area_video_bytes" not in report and "roi_psnr" not in report
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{report['trial_bytes_vs_area_pct']:+.1f}% vs plain area downscaling at CRF 23 as the closed loop's " \
           f"trials estimate it, --compare_area measures it" in last


def test_odd_size_video_input_and_fps(tmp_path, ckpt):
    frames, _ = moving_square_frames(n=5, h=47, w=65)
    w = H264Writer(tmp_path / "in.mp4", fps=10)
    for f in frames:
        w.write(f)
    w.close()  # the mp4 pads to 66x48
    out = tmp_path / "out"
    code, _ = run(["--input_dir", tmp_path / "in.mp4", "--output_dir", out, "--checkpoint_path", ckpt,
                   "--roi_source", "motion", "--scale_factor", "2", "--save_frames"])
    assert code == 0
    assert read_image_rgb(out / "frames" / "00000.png").shape == (24, 33, 3)
    assert FrameReader(out / "video.mp4").info.fps == pytest.approx(10)


def test_folder_of_sequences_gets_one_subfolder_each(tmp_path, ckpt):
    root = tmp_path / "seqs"
    frames, _ = moving_square_frames(n=3)
    for name in ("a", "b"):
        for i, f in enumerate(frames):
            write_png(root / name / f"{i}.png", f)
    out = tmp_path / "out"
    assert run(["--input_dir", root, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion",
                "--save_frames"])[0] == 0
    assert len(list((out / "a" / "frames").iterdir())) == 3 and (out / "b" / "report.json").exists()


def test_streaming_output_does_not_depend_on_batch_size(tmp_path, frame_folder, ckpt):
    """The network streams exactly, whatever the batch. (Without the closed loop: its trial encodes
    inherit x264's rare run-to-run byte differences, which can flip a near-tie.)"""
    outs = []
    for bs in (1, 100):
        out = tmp_path / f"out{bs}"
        run(["--input_dir", frame_folder, *common(ckpt, out, ["--masks_dir", tmp_path / "clip_masks",
                                                              "--batch_size", bs, "--rd_control", "off"])])
        outs.append([read_image_rgb(p) for p in sorted((out / "frames").iterdir())])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_debug_artefacts(tmp_path, frame_folder, ckpt):
    out = tmp_path / "out"
    run(["--input_dir", frame_folder, *common(ckpt, out, ["--masks_dir", tmp_path / "clip_masks", "--debug"])])
    side = read_image_rgb(out / "debug" / "00000.png")
    assert side.shape[1] > 3 * 32 and (out / "debug" / "parameters.png").stat().st_size > 1000


def test_leaving_strip_shows_input_output_and_the_difference_at_four_times(tmp_path, frame_folder, ckpt, capsys):
    import debug_viz
    out, strip = tmp_path / "out", tmp_path / "leaving.png"
    assert debug_viz.main(["--input", str(frame_folder), "--output_dir", str(out), "--frame", "2",
                           "--to", str(strip)]) == 2  # no inference run there yet: one line, nothing written
    assert "run inference.py into it first" in capsys.readouterr().err and not strip.exists()
    run(["--input_dir", frame_folder, *common(ckpt, out, ["--masks_dir", tmp_path / "clip_masks"])])
    assert debug_viz.main(["--input", str(frame_folder), "--output_dir", str(out), "--frame", "3",
                           "--to", str(strip)]) == 0
    image = read_image_rgb(strip)
    fps = FrameReader(frame_folder).info.fps
    step = max(1, round(fps / 2))
    columns = len([t for t in (3 - step, 3, 3 + step, 3 + 2 * step) if 0 <= t < 6])
    assert image.shape[1] == columns * 320 + 4 * (columns - 1) and image.shape[0] > 3 * 240


def test_auto_falls_back_to_motion_with_one_line_warning(tmp_path, frame_folder, ckpt, capsys):
    out = tmp_path / "out"
    code, err = run(["--input_dir", frame_folder, "--output_dir", out, "--checkpoint_path", ckpt,
                     "--roi_source", "auto", "--seg_model_path", tmp_path / "missing-seg.pt"], capsys)
    assert code == 0
    warning = [l for l in err.splitlines() if l.startswith("WARNING")]
    assert len(warning) == 1 and "missing-seg.pt" in warning[0] and "--roi_source motion" in warning[0]
    assert json.loads((out / "report.json").read_text())["roi_source"] == "motion"


@pytest.mark.parametrize("case", ["yolo_without_weights", "missing_ckpt", "corrupt_ckpt", "scale_mismatch",
                                  "output_inside_input", "missing_input", "masks_without_dir", "bad_strength"])
def test_errors_are_one_line_and_write_nothing(tmp_path, frame_folder, ckpt, capsys, case):
    out = tmp_path / "out"
    args = ["--input_dir", frame_folder, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion"]
    if case == "yolo_without_weights":
        args += ["--roi_source", "yolo", "--seg_model_path", tmp_path / "none.pt"]
    elif case == "missing_ckpt":
        args[5] = tmp_path / "nope.pth"
    elif case == "corrupt_ckpt":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(ckpt.read_bytes()[:200])
        args[5] = bad
    elif case == "scale_mismatch":
        args += ["--scale_factor", "4"]
    elif case == "output_inside_input":
        out = frame_folder / "out"
        args[3] = out
    elif case == "missing_input":
        args[1] = tmp_path / "no_such_clip"
    elif case == "masks_without_dir":
        args += ["--roi_source", "masks"]
    elif case == "bad_strength":
        args += ["--background_strength", "1.5"]
    before = sorted(p.name for p in frame_folder.iterdir())
    code, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not out.exists()
    assert sorted(p.name for p in frame_folder.iterdir()) == before


def test_background_strength_zero_gives_area_background(tmp_path, frame_folder, ckpt):
    """--background_strength 0 turns off simplification and hold: the output is area downscaling."""
    import cv2
    out = tmp_path / "out"
    extra = ["--masks_dir", tmp_path / "clip_masks", "--background_strength", "0"]
    assert run(["--input_dir", frame_folder, *common(ckpt, out, extra)])[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["background_strength"] == 0 and all(p["bg_simplify"] == 0 for p in report["parameters"])
    for i, src in enumerate(sorted(p for p in frame_folder.iterdir() if p.suffix == ".png")):
        f = read_image_rgb(src)
        area = cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(read_image_rgb(out / "frames" / f"{i:05d}.png").astype(int) - area).max() <= 1
    default = tmp_path / "default"
    assert run(["--input_dir", frame_folder, *common(ckpt, default, extra[:2])])[0] == 0
    assert json.loads((default / "report.json").read_text())["parameters"][3]["bg_simplify"] > 0.1


def test_torch_takes_half_the_cores_by_default(monkeypatch):
    """The pipeline's stages already run side by side: threads inside each op would compete with them."""
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert inference.default_threads() == 4
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert inference.default_threads() == 1


def test_read_frames_announces_each_frame_lookahead_frames_before_its_mask():
    class Reader:
        def __init__(self, frames):
            self.frames, self.last_name = frames, None

        def __iter__(self):
            for i, f in enumerate(self.frames):
                self.last_name = f"{i:05d}.png"
                yield f

    class Noting:
        lookahead = 2

        def __init__(self):
            self.events = []

        def announce(self, frame):
            self.events.append(("announce", int(frame[0, 0, 0])))

        def mask(self, frame, name):
            self.events.append(("mask", int(frame[0, 0, 0]), name))
            return np.full(frame.shape[:2], frame[0, 0, 0] / 10, np.float32)

    class Bar:
        def update(self):
            pass

    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(5)]
    source, names, seconds = Noting(), [], {"read": 0.0, "segment": 0.0}
    pairs = list(inference.read_frames(Reader(frames), source, 2, seconds, Bar(), names))
    assert [int(f[0, 0, 0]) for f, _ in pairs] == [0, 1, 2, 3, 4] and names == [f"{i:05d}.png" for i in range(5)]
    assert all(m[0, 0] == np.float32(f[0, 0, 0] / 10) for f, m in pairs)
    asked = [e for e in source.events if e[0] == "mask"]
    assert [e[2] for e in asked] == names  # each mask gets its own frame's name, not the newest read
    for i in range(5):  # frame i + 2 (when there is one) is announced before frame i's mask is asked for
        at = source.events.index(("mask", i, names[i]))
        assert ("announce", min(i + 2, 4)) in source.events[:at]
