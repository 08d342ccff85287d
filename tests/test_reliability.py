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
    soft = read_image_rgb(out / "masks" / "00003.png")[..., 0] > 128  # output 3 is input frame 004
    truth = read_image_rgb(masks / "004.png")[::2, ::2, 0] > 0
    assert (soft & truth).sum() == truth.sum() and (soft & ~truth).sum() < truth.sum()


@pytest.mark.parametrize("flags", [["--fps", "-5"], ["--fps", "nan"], ["--fps", "0"], ["--device", "tpu"],
                                   ["--threads", "-1"], ["--debug_every", "0"], ["--keyframe_interval", "0"],
                                   ["--crf", "60"], ["--background_crf", "10"], ["--background_crf", "x"]])
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
