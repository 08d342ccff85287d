import json

import numpy as np
import pytest
import torch

import data
import train_roi_downsampler as trainer
from video_io import H264Writer, write_png
from errors import UserError
from conftest import moving_square_frames


def make_davis(root, names=("a", "b", "c"), n=5):
    frames, masks = moving_square_frames(n=n)
    for k, name in enumerate(names):
        for i in range(n):
            write_png(root / "JPEGImages" / "480p" / name / f"{i:05d}.png", np.roll(frames[i], 3 * k, axis=1))
            write_png(root / "Annotations" / "480p" / name / f"{i:05d}.png", np.roll(masks[i], 3 * k, axis=1))
    return root


def test_davis_layout_uses_annotations(tmp_path):
    found = data.discover(make_davis(tmp_path / "davis"), tmp_path / "cache")
    assert found.layout == "davis" and [s.name for s in found.sequences] == ["a", "b", "c"]
    assert all(s.masks is not None and len(s.masks) == 5 for s in found.sequences)


def test_folder_of_sequences_and_folder_of_videos(tmp_path):
    frames, _ = moving_square_frames(n=4)
    for name in ("x", "y"):
        for i, f in enumerate(frames):
            write_png(tmp_path / "seqs" / name / f"{i}.png", f)
        w = H264Writer(tmp_path / "vids" / f"{name}.mp4", fps=25)
        for f in frames:
            w.write(f)
        w.close()
    seqs = data.discover(tmp_path / "seqs", tmp_path / "cache")
    vids = data.discover(tmp_path / "vids", tmp_path / "cache")
    assert seqs.layout == "sequences" and [s.name for s in seqs.sequences] == ["x", "y"]
    assert vids.layout == "videos" and all(len(s.frames) == 4 for s in vids.sequences)
    assert all(s.masks is None for s in seqs.sequences + vids.sequences)


def test_bad_sequences_are_named_and_skipped(tmp_path, capsys):
    root = make_davis(tmp_path / "davis")
    (root / "JPEGImages" / "480p" / "b" / "00000.png").write_bytes(b"broken")
    (root / "JPEGImages" / "480p" / "empty").mkdir()
    found = data.discover(root, tmp_path / "cache")
    assert capsys.readouterr().err.count("WARNING: skipping sequence") == 2
    assert [s.name for s in found.sequences] == ["a", "c"]
    assert len(found.skipped) == 2 and any(s.startswith("b:") for s in found.skipped)
    with pytest.raises(UserError, match="no such folder"):
        data.discover(tmp_path / "nothing", tmp_path / "cache")


def test_split_is_by_sequence_and_deterministic(tmp_path):
    seqs = [data.Sequence(f"s{i}", []) for i in range(10)]
    train, val = data.split_sequences(seqs, 0.2)
    assert len(val) == 2 and not {s.name for s in train} & {s.name for s in val}
    assert [s.name for s in data.split_sequences(seqs, 0.2)[1]] == [s.name for s in val]
    assert [s.name for s in data.split_sequences(seqs, 0.2, ["s3"])[1]] == ["s3"]


class CountingSegmenter:
    calls = 0

    def mask(self, frame):
        CountingSegmenter.calls += 1
        return (frame[..., 0] > 200).astype(np.float32)


def test_masks_are_computed_once_per_frame_and_invalidated_by_changes(tmp_path):
    frames, _ = moving_square_frames(n=4)
    for i, f in enumerate(frames):
        write_png(tmp_path / "seq" / f"{i}.png", f)
    seq = data.Sequence("seq", sorted((tmp_path / "seq").iterdir()))
    CountingSegmenter.calls = 0
    for epoch in range(3):
        cached = data.cache_masks(seq, CountingSegmenter, "key1", tmp_path / "masks")
    assert CountingSegmenter.calls == 4 and all(p.exists() for p in cached.roi_masks)
    write_png(seq.frames[2], 255 - frames[2])  # a changed frame: only it is recomputed
    data.cache_masks(seq, CountingSegmenter, "key1", tmp_path / "masks")
    assert CountingSegmenter.calls == 5
    data.cache_masks(seq, CountingSegmenter, "key2", tmp_path / "masks")  # another model: all again
    assert CountingSegmenter.calls == 9


def tiny_args(dataset, out, *extra):
    return ["--dataset_path", str(dataset), "--output_dir", str(out), "--epochs", "2", "--steps_per_epoch", "3",
            "--batch_size", "2", "--clip_length", "2", "--crop_size", "32", "--val_frames", "3",
            "--val_sequences", "c", "--perceptual_model", "none", "--device", "cpu", *extra]


def test_training_writes_checkpoints_log_and_curves(tmp_path):
    dataset, out = make_davis(tmp_path / "davis"), tmp_path / "run"
    assert trainer.main(tiny_args(dataset, out, "--export", str(tmp_path / "exported.pth"))) == 0
    assert (out / "checkpoints" / "latest.pth").exists() and (out / "checkpoints" / "best.pth").exists()
    rows = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"model_bytes", "area_bytes", "model_roi_psnr", "area_roi_psnr", "model_flicker"} <= set(rows[0]["val"])
    assert (out / "training_curves.png").stat().st_size > 1000 and (tmp_path / "exported.pth").exists()
    from checkpoint import load_model
    _, ckpt = load_model(tmp_path / "exported.pth", expected_scale=2)
    assert ckpt["train_args"]["roi"]["roi_source"] == "auto" and ckpt["train_args"]["roi"]["roi_motion"] == "off"
    # a second run into the same folder must not clobber it silently
    assert trainer.main(tiny_args(dataset, out)) == 2


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    dataset = make_davis(tmp_path / "davis")
    assert trainer.main(tiny_args(dataset, tmp_path / "full")) == 0
    reference = torch.load(tmp_path / "full" / "checkpoints" / "latest.pth", weights_only=True)["model"]

    from blip_clip_loss import CombinedLoss
    original, calls = CombinedLoss.forward, {"n": 0}

    def interrupt_on_fifth_step(self, *a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not validation (no_grad)
        if calls["n"] == 5:  # epoch 2, step 2 of 3
            raise KeyboardInterrupt
        return original(self, *a, **k)
    monkeypatch.setattr(CombinedLoss, "forward", interrupt_on_fifth_step)
    assert trainer.main(tiny_args(dataset, tmp_path / "cut")) == 130
    monkeypatch.setattr(CombinedLoss, "forward", original)
    assert torch.load(tmp_path / "cut" / "checkpoints" / "latest.pth", weights_only=True)["step"] == 1
    assert trainer.main(tiny_args(dataset, tmp_path / "cut", "--resume")) == 0
    resumed = torch.load(tmp_path / "cut" / "checkpoints" / "latest.pth", weights_only=True)["model"]
    assert all(torch.allclose(reference[k], resumed[k], atol=1e-6) for k in reference)


def test_missing_perceptual_weights_is_an_error_unless_allowed(tmp_path, capsys):
    dataset = make_davis(tmp_path / "davis")
    args = tiny_args(dataset, tmp_path / "run")
    args[args.index("none")] = "clip"
    args += ["--clip_pretrained", str(tmp_path / "no_weights.bin"), "--epochs", "1", "--steps_per_epoch", "1"]
    assert trainer.main(args) == 2
    assert "--allow_missing_perceptual" in capsys.readouterr().err
    assert trainer.main(args + ["--allow_missing_perceptual"]) == 0


def test_interrupt_during_validation_resumes_without_retraining_the_epoch(tmp_path, monkeypatch):
    dataset = make_davis(tmp_path / "davis")
    assert trainer.main(tiny_args(dataset, tmp_path / "full")) == 0
    reference = torch.load(tmp_path / "full" / "checkpoints" / "latest.pth", weights_only=True)["model"]
    original = trainer.validate

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "validate", interrupted)
    assert trainer.main(tiny_args(dataset, tmp_path / "cut")) == 130
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "latest.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (0, 3)  # all steps of epoch 1 done, its validation pending
    monkeypatch.setattr(trainer, "validate", original)
    assert trainer.main(tiny_args(dataset, tmp_path / "cut", "--resume")) == 0
    resumed = torch.load(tmp_path / "cut" / "checkpoints" / "latest.pth", weights_only=True)["model"]
    assert all(torch.allclose(reference[k], resumed[k], atol=1e-6) for k in reference)
    rows = [json.loads(l) for l in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["train"]


def test_corrupt_frame_mid_sequence_skips_that_sequence(tmp_path, capsys):
    root = make_davis(tmp_path / "davis")
    (root / "JPEGImages" / "480p" / "b" / "00003.png").write_bytes(b"broken")
    found = data.discover(root, tmp_path / "cache")
    assert [s.name for s in found.sequences] == ["a", "c"] and "00003.png" in found.skipped[0]


def test_unwritable_export_fails_before_training(tmp_path, capsys):
    dataset = make_davis(tmp_path / "davis")
    (tmp_path / "file").write_text("x")
    code = trainer.main(tiny_args(dataset, tmp_path / "run", "--export", str(tmp_path / "file" / "m.pth")))
    assert code == 2 and "--export" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def first_error(stderr: str) -> str:
    """What a failed torchrun says, its ranks' own messages first (its traceback comes last)."""
    lines = stderr.splitlines()
    hits = [i for i, l in enumerate(lines) if any(w in l for w in ("Error", "error", "terminate", "Abort", "abort"))]
    return "\n".join(lines[max(0, hits[0] - 5): hits[0] + 20] if hits else []) + "\n...\n" + stderr[-1500:]


def test_two_processes_follow_the_same_schedule_as_one(tmp_path):
    """torchrun with 2 processes (gloo on CPU): steps are global, so the learning-rate schedule ends
    where a single process's does, every epoch is logged with real losses, and --resume works."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    dataset = make_davis(tmp_path / "davis")
    repo = Path(__file__).resolve().parents[1]

    def launch(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(repo / "train_roi_downsampler.py"), *tiny_args(dataset, out, "--steps_per_epoch", "4"), *extra]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    res = launch(tmp_path / "ddp")
    assert res.returncode == 0, first_error(res.stderr)
    assert trainer.main(tiny_args(dataset, tmp_path / "one", "--steps_per_epoch", "4")) == 0
    ddp, one = (torch.load(tmp_path / n / "checkpoints" / "latest.pth", weights_only=True) for n in ("ddp", "one"))
    assert ddp["scheduler"]["last_epoch"] == one["scheduler"]["last_epoch"] == 8
    assert ddp["scheduler"]["_last_lr"] == pytest.approx(one["scheduler"]["_last_lr"])
    rows = [json.loads(l) for l in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["train"]["rate"] > 0 for r in rows)
    res = launch(tmp_path / "ddp", "--resume")  # nothing left to do: it resumes at the end and exits cleanly
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-2000:]
