"""Nothing lost, nothing partial, nothing stale, nothing executed: the promises of the input
policies, each tried the way a user would break them."""
import hashlib
import json

import numpy as np
import pytest
import torch

import inference
from checkpoint import load_model, save as save_checkpoint
from roi_downsampler import DownsamplerConfig, ROIDownsampler
from video_io import H264Writer, read_image_rgb, write_png
from conftest import moving_square_frames


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "x2.pth"
    save_checkpoint(path, ROIDownsampler(DownsamplerConfig(scale_factor=2)))
    return path


def checksums(folder):
    return {p.relative_to(folder): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run(args, capsys):
    code = inference.main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(code, err):
    lines = [l for l in err.strip().splitlines() if not l.startswith(("downsampling", "WARNING"))]
    return code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def clip_folder(root, n=30, h=48, w=64):
    frames, masks = moving_square_frames(n=n, h=h, w=w)
    for i, (f, m) in enumerate(zip(frames, masks)):
        write_png(root / "clip" / f"{i:03d}.png", f)
        write_png(root / "masks" / f"{i:03d}.png", m)
    return root / "clip", root / "masks"


def test_rerun_into_its_own_result_refuses_and_keeps_the_input(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=6)
    out = tmp_path / "demo"
    assert run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion",
                "--save_frames"], capsys)[0] == 0
    before = checksums(out)
    # re-downscale an earlier result, naturally written into the same folder: must not eat its input
    code, err = run(["--input_dir", out / "frames", "--output_dir", out, "--checkpoint_path", ckpt,
                     "--roi_source", "motion"], capsys)
    assert one_line_error(code, err) and "inside --output_dir" in err
    assert checksums(out) == before
    link = tmp_path / "link"
    link.symlink_to(out)  # the same through a symlink
    code, err = run(["--input_dir", link / "frames", "--output_dir", out, "--checkpoint_path", ckpt], capsys)
    assert one_line_error(code, err) and checksums(out) == before


class Payload:
    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    Payload.marker = marker
    evil = tmp_path / "evil.pth"
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    torch.save({"format": "roi-downsampler", "format_version": 2, "config": {}, "scale_factor": 2,
                "model": model.state_dict(), "metrics": Payload()}, evil, pickle_protocol=2)
    clip, _ = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", evil], capsys)
    assert one_line_error(code, err) and "refused" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


@pytest.mark.parametrize("case", ["no_scale", "scale_text", "missing_weights"])
def test_damaged_checkpoints_name_what_is_wrong(tmp_path, case):
    from errors import UserError
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    path = tmp_path / "m.pth"
    save_checkpoint(path, model)
    ckpt = torch.load(path, weights_only=True)
    if case == "no_scale":
        del ckpt["scale_factor"]
    elif case == "scale_text":
        ckpt["scale_factor"] = "x2"
    else:
        del ckpt["model"]["detail.0.weight"]
    torch.save(ckpt, path)
    match = {"no_scale": "lacks scale_factor", "scale_text": "'x2'", "missing_weights": "detail.0.weight"}[case]
    with pytest.raises(UserError, match=match):
        load_model(path)


@pytest.mark.parametrize("case", ["corrupt_frame", "size_change", "masks_run_out"])
def test_an_error_midway_leaves_nothing(tmp_path, ckpt, capsys, case):
    clip, masks = clip_folder(tmp_path)
    if case == "corrupt_frame":
        (clip / "020.png").write_bytes(b"broken")
    elif case == "size_change":
        write_png(clip / "020.png", np.zeros((40, 64, 3), np.uint8))
    else:
        for p in sorted(masks.iterdir())[10:]:
            p.unlink()
    out = tmp_path / "out"
    code, err = run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "masks",
                     "--masks_dir", masks, "--batch_size", "4"], capsys)
    assert one_line_error(code, err), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_second_run_replaces_the_first_as_a_whole(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=12)
    out = tmp_path / "out"
    args = ["--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion", "--save_frames"]
    assert run(["--input_dir", clip, *args], capsys)[0] == 0
    for p in sorted(clip.iterdir())[5:]:
        p.unlink()
    assert run(["--input_dir", clip, *args], capsys)[0] == 0
    assert len(list((out / "frames").iterdir())) == 5 and json.loads((out / "report.json").read_text())["frames"] == 5
    (out / "notes.txt").write_text("mine")  # not a result any more: never deleted
    code, err = run(["--input_dir", clip, *args], capsys)
    assert one_line_error(code, err) and (out / "notes.txt").read_text() == "mine"


def test_output_dir_that_is_a_file_is_one_line(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=3)
    (tmp_path / "taken").write_text("x")
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "taken", "--checkpoint_path", ckpt], capsys)
    assert one_line_error(code, err) and (tmp_path / "taken").read_text() == "x"


def write_video(path, n=48):
    frames, _ = moving_square_frames(n=n, h=64, w=96)
    w = H264Writer(path, fps=25)
    for f in frames:
        w.write(f)
    w.close()


def test_truncated_video_is_an_error_or_recorded_with_skip(tmp_path, ckpt, capsys):
    import av
    full, cut = tmp_path / "full.mp4", tmp_path / "cut.mkv"
    write_video(full)
    with av.open(str(full)) as src, av.open(str(tmp_path / "whole.mkv"), "w") as dst:  # remux to mkv
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    whole = (tmp_path / "whole.mkv").read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])  # a download cut off half-way
    out = tmp_path / "out"
    code, err = run(["--input_dir", cut, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion"],
                    capsys)
    assert one_line_error(code, err) and "cut.mkv" in err and not out.exists()
    code, err = run(["--input_dir", cut, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion",
                     "--skip_bad_frames"], capsys)
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and 0 < report["frames"] < 48 and report["skipped_frames"]


def test_sequence_name_collision_is_refused(tmp_path, ckpt, capsys):
    root = tmp_path / "seqs"
    frames, _ = moving_square_frames(n=3)
    for i, f in enumerate(frames):
        write_png(root / "clip" / f"{i}.png", f)
    write_video(root / "clip.mp4", n=3)
    code, err = run(["--input_dir", root, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt], capsys)
    assert one_line_error(code, err) and "clip.mp4" in err and not (tmp_path / "out").exists()


def test_masks_stay_with_their_frames_when_a_frame_is_skipped(tmp_path, ckpt, capsys):
    clip, masks = clip_folder(tmp_path, n=8)
    (clip / "003.png").write_bytes(b"broken")
    out = tmp_path / "out"
    code, _ = run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "masks",
                   "--masks_dir", masks, "--skip_bad_frames", "--save_frames"], capsys)
    assert code == 0
    assert json.loads((out / "report.json").read_text())["input_frames"][2:4] == ["002.png", "004.png"]
    soft = read_image_rgb(out / "masks" / "00003.png")[..., 0] > 128  # output 3 is input frame 004
    truth = read_image_rgb(masks / "004.png")[::2, ::2, 0] > 0
    assert (soft & truth).sum() == truth.sum() and (soft & ~truth).sum() < truth.sum()


@pytest.mark.parametrize("flags", [["--fps", "-5"], ["--fps", "nan"], ["--fps", "0"], ["--device", "tpu"],
                                   ["--threads", "-1"], ["--debug_every", "0"], ["--keyframe_interval", "0"],
                                   ["--crf", "60"], ["--background_crf", "10"], ["--background_crf", "x"],
                                   ["--conf", "5"], ["--conf", "nan"], ["--threads", "100000"], ["--seg_imgsz", "0"],
                                   ["--preset", "bogus"]])
def test_bad_flags_are_one_line(tmp_path, ckpt, capsys, flags):
    clip, _ = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--roi_source", "motion", *flags], capsys)
    assert one_line_error(code, err) and flags[0] in err and not (tmp_path / "out").exists()


def test_masks_dir_with_auto_uses_the_masks_and_says_so(tmp_path, ckpt, capsys):
    clip, masks = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--masks_dir", masks], capsys)
    assert code == 0 and "using those masks" in err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["roi_source"] == "masks"


def test_masks_of_another_aspect_ratio_are_an_error(tmp_path, ckpt, capsys):
    clip, masks = clip_folder(tmp_path, n=3)
    for p in masks.iterdir():
        write_png(p, np.zeros((48, 48), np.uint8))
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--roi_source", "masks", "--masks_dir", masks], capsys)
    assert one_line_error(code, err) and "aspect ratio" in err


@pytest.mark.parametrize("code_, fix", [("ENOSPC", "disk is full"), ("EROFS", "read-only"), ("EACCES", "permission")])
def test_full_disk_or_read_only_output_is_one_line_and_leaves_nothing(tmp_path, ckpt, capsys, monkeypatch, code_, fix):
    """The disk fills up (or turns out read-only) while the report is written: one line naming the
    fix, no traceback, and the output folder does not appear half-written. (Root ignores
    permission bits, so the failure is injected where the OS would raise it.)"""
    import errno
    clip, _ = clip_folder(tmp_path, n=3)

    def fail(path, data):
        raise OSError(getattr(errno, code_), "injected", str(path))
    monkeypatch.setattr(inference, "atomic_write_bytes", fail)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--roi_source", "motion"], capsys)
    assert one_line_error(code, err) and fix in err and "report.json" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# ----------------------------------------------------------------------------- round two (issue 19)


def test_a_dataset_given_as_output_dir_is_refused_and_kept(tmp_path, ckpt, capsys):
    """Names alone prove nothing: a dataset laid out as clipA/frames, clipB/masks is not a result."""
    clip, _ = clip_folder(tmp_path, n=3)
    data = tmp_path / "dataset"
    write_png(data / "clipA" / "frames" / "000.jpg.png", np.zeros((8, 8, 3), np.uint8))
    write_png(data / "clipB" / "masks" / "000.png", np.zeros((8, 8), np.uint8))
    before = checksums(data)
    code, err = run(["--input_dir", clip, "--output_dir", data, "--checkpoint_path", ckpt], capsys)
    assert one_line_error(code, err) and "did not write" in err and checksums(data) == before


def test_hidden_files_count(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=3)
    out = tmp_path / "project"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref")
    (out / ".env").write_text("SECRET=1")
    before = checksums(out)
    code, err = run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt], capsys)
    assert one_line_error(code, err) and checksums(out) == before


def test_a_file_added_to_a_result_protects_it(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=3)
    out = tmp_path / "out"
    args = ["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion"]
    assert run([*args, "--save_frames"], capsys)[0] == 0
    (out / "frames" / ".notes").write_text("mine")  # hidden, deep inside: still not ours
    code, err = run(args, capsys)
    assert one_line_error(code, err) and (out / "frames" / ".notes").read_text() == "mine"


@pytest.mark.parametrize("flag", ["--masks_dir", "--checkpoint_path"])
def test_output_dir_around_any_input_is_refused(tmp_path, ckpt, capsys, flag):
    clip, masks = clip_folder(tmp_path, n=3)
    proj = tmp_path / "proj"
    (proj / "masks").mkdir(parents=True)
    for p in masks.iterdir():
        (proj / "masks" / p.name).write_bytes(p.read_bytes())
    (proj / "x2.pth").write_bytes(ckpt.read_bytes())
    before = checksums(proj)
    inside = flag == "--checkpoint_path"
    args = ["--input_dir", clip, "--output_dir", proj, "--roi_source", "masks",
            "--masks_dir", masks if inside else proj / "masks", "--checkpoint_path", proj / "x2.pth" if inside else ckpt]
    code, err = run(args, capsys)
    assert one_line_error(code, err) and flag in err and checksums(proj) == before


def test_evaluate_and_train_refuse_outputs_inside_their_inputs(tmp_path, capsys):
    import evaluate
    import train_roi_downsampler
    clip, _ = clip_folder(tmp_path, n=3)
    before = checksums(clip)
    assert evaluate.main(["--input", str(clip), "--output_dir", str(clip), "--methods", "area",
                          "--detector_path", "none", "--roi_source", "motion"]) == 2
    assert train_roi_downsampler.main(["--dataset_path", str(tmp_path), "--output_dir", str(clip / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and checksums(clip) == before and not (clip / "run").exists()


class YoloPayload:
    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("tool", ["inference", "evaluate"])
def test_a_yolo_file_that_would_run_code_is_refused_even_with_auto(tmp_path, ckpt, capsys, tool):
    marker = tmp_path / "pwned"
    YoloPayload.marker = marker
    evil = tmp_path / "yolov8n-seg.pt"
    torch.save({"model": YoloPayload(), "train_args": {}}, evil)
    clip, _ = clip_folder(tmp_path, n=3)
    if tool == "inference":  # the default --roi_source auto must not fall back to motion: the file is there
        code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                         "--seg_model_path", evil], capsys)
    else:
        import evaluate
        code = evaluate.main(["--input", str(clip), "--output_dir", str(tmp_path / "out"), "--methods", "area",
                              "--detector_path", str(evil), "--roi_source", "motion"])
        err = capsys.readouterr().err
    assert one_line_error(code, err) and "yolov8n-seg.pt" in err and "refused" in err
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"not a model at all", b""])
def test_a_file_renamed_onnx_is_one_line(tmp_path, ckpt, capsys, content):
    bad = tmp_path / "seg.onnx"
    bad.write_bytes(content)
    clip, _ = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--seg_model_path", bad], capsys)
    assert one_line_error(code, err) and "seg.onnx" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["clip.mp4", "weights"])
def test_a_segmenter_that_is_no_model_file_is_one_line(tmp_path, ckpt, capsys, name):
    """A video or an extensionless file given as the segmenter: Ultralytics accepts the name and
    fails only at the first frame, on the input thread, with a traceback."""
    bad = tmp_path / name
    bad.write_bytes(b"\x00" * 64)
    clip, _ = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--seg_model_path", bad], capsys)
    assert one_line_error(code, err) and name in err and ".pt" in err and not (tmp_path / "out").exists()


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=3)
    stale = tmp_path / ".out.partial-abc123"
    (stale / "frames").mkdir(parents=True)
    (stale / "frames" / "00000.png").write_bytes(b"half")
    (tmp_path / ".out.lock").write_text("")
    assert run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                "--roi_source", "motion"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_error_leaves_no_empty_parent_folders(tmp_path, ckpt, capsys):
    clip, _ = clip_folder(tmp_path, n=3)
    out = tmp_path / "new" / "deeper" / "out"
    code, err = run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "masks",
                     "--masks_dir", tmp_path / "nowhere"], capsys)
    assert one_line_error(code, err) and not (tmp_path / "new").exists()
    assert run(["--input_dir", clip, "--output_dir", out, "--checkpoint_path", ckpt, "--roi_source", "motion"],
               capsys)[0] == 0 and (out / "video.mp4").is_file()


@pytest.mark.parametrize("case", ["weights_only", "other_scale", "changed_epochs"])
def test_resume_that_cannot_continue_is_one_line(tmp_path, capsys, case):
    import train_roi_downsampler
    from test_training import make_davis
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    extra = {} if case == "weights_only" else dict(
        optimizer={}, scheduler={}, scaler={}, rng={}, epoch=0, step=1, best_score=1.0, partial={},
        train_args={"epochs": 5, "steps_per_epoch": 200, "batch_size": 4})
    save_checkpoint(run_dir / "checkpoints" / "latest.pth", model, **extra)
    data = make_davis(tmp_path / "davis")
    args = ["--dataset_path", str(data), "--output_dir", str(run_dir), "--resume", "--perceptual_model", "none"]
    args += {"weights_only": [], "other_scale": ["--scale_factor", "4"], "changed_epochs": ["--epochs", "9"]}[case]
    assert train_roi_downsampler.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "--resume" in err, err


def test_random_bytes_are_not_called_a_malicious_pickle(tmp_path, capsys):
    bad = tmp_path / "random.pth"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    clip, _ = clip_folder(tmp_path, n=3)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", bad], capsys)
    assert one_line_error(code, err) and "not a PyTorch checkpoint" in err and "Python objects" not in err


@pytest.mark.parametrize("script", ["inference.py", "evaluate.py", "train_roi_downsampler.py", "calibrate_gate.py"])
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path, script):
    """SIGINT a fraction of a second after start (torch and friends are still importing)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    # as in a terminal: a runner started in the background (nohup, &) passes SIGINT on ignored
    proc = subprocess.Popen([sys.executable, str(repo / script), "--help"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(repo)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == ["interrupted: nothing was written"], err


def test_the_cli_leaves_without_teardown_but_says_everything(tmp_path, frame_folder):
    """inference.py ends by os._exit (errors.exit_now): its last line and its one-line errors still
    reach a pipe (block-buffered), and the result is complete."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    cmd = [sys.executable, str(repo / "inference.py"), "--input_dir", str(frame_folder), "--roi_source", "motion"]
    done = subprocess.run([*cmd, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1].startswith("wrote 6 frames"), done.stderr
    assert (tmp_path / "out" / "video.mp4").is_file() and (tmp_path / "out" / "report.json").is_file()
    failed = subprocess.run([*cmd, "--output_dir", str(tmp_path / "bad"), "--crf", "60"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == ["error: --crf must be in 0..51, got 60"]


def test_a_second_ctrl_c_waits_for_the_checkpoint_being_saved(tmp_path):
    import os
    import signal
    from errors import no_interrupts
    saved = []
    with pytest.raises(KeyboardInterrupt):
        with no_interrupts():
            os.kill(os.getpid(), signal.SIGINT)  # arrives while "saving"
            saved.append("checkpoint")
    assert saved == ["checkpoint"]


def test_a_full_disk_without_a_file_name_names_the_output_folder(tmp_path, ckpt, capsys, monkeypatch):
    import errno
    clip, _ = clip_folder(tmp_path, n=3)

    def fail(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # as the encoder library raises it: no path
    monkeypatch.setattr(inference, "atomic_write_bytes", fail)
    code, err = run(["--input_dir", clip, "--output_dir", tmp_path / "out", "--checkpoint_path", ckpt,
                     "--roi_source", "motion"], capsys)
    assert one_line_error(code, err) and str(tmp_path / "out") in err and "disk is full" in err


@pytest.mark.parametrize("flags", [["--lr", "nan"], ["--workers", "-1"], ["--roi_source", "bogus"],
                                   ["--conf", "7"]])
def test_training_flags_are_checked_before_any_work(tmp_path, capsys, flags):
    import train_roi_downsampler
    from test_training import make_davis
    data = make_davis(tmp_path / "davis")
    before = checksums(data)
    code = train_roi_downsampler.main(["--dataset_path", str(data), "--output_dir", str(tmp_path / "run"),
                                       "--perceptual_model", "none", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and flags[0] in err, err
    assert not (tmp_path / "run").exists() and checksums(data) == before


def test_evaluate_max_frames_zero_is_one_line(tmp_path, capsys):
    import evaluate
    clip, _ = clip_folder(tmp_path, n=3)
    assert evaluate.main(["--input", str(clip), "--max_frames", "0", "--methods", "area", "--detector_path", "none",
                          "--output_dir", str(tmp_path / "eval")]) == 2
    assert "--max_frames" in capsys.readouterr().err and not (tmp_path / "eval").exists()


def test_a_resumed_suite_reuses_a_clip_only_when_its_roi_flags_are_the_same():
    """The ROI flags decide the masks: a result stored under other flags is measured again."""
    import evaluate
    from rd_control import EncoderOptions

    def signature(*flags):
        args = evaluate.build_parser().parse_args(["--suite", *flags])
        return evaluate.run_signature(args, EncoderOptions(), [23], ["area"], "yolo+motion yolov8n-seg-dq.pt")
    assert signature() == signature()
    for flags in (["--keyframe_interval", "5"], ["--skip_quiet_keyframes", "on"], ["--seg_imgsz", "320"]):
        assert signature(*flags) != signature(), flags
