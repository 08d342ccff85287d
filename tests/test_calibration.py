"""calibrate_gate.py: the background gate is fitted to the closed loop's x264 verdict on the
checkpoint's training sequences (never its validation ones) and written safely."""
import numpy as np
import pytest
import torch

import calibrate_gate as cal
from checkpoint import load_model, save as save_checkpoint
from roi_downsampler import PARAM_NAMES, DownsamplerConfig, ROIDownsampler
from conftest import moving_square_frames
from test_training import make_davis


def test_fit_gate_follows_the_verdicts_on_raw_feature_scales():
    rng = torch.Generator().manual_seed(0)
    pays = torch.randn(50, 4, generator=rng) * 0.3
    costs = torch.randn(50, 4, generator=rng) * 0.3 + torch.tensor([2.0, 0.0, 0.0, 1.0])
    scale = torch.tensor([100.0, 1.0, 0.01, 1.0])  # the statistics live on very different scales
    x = torch.cat([pays, costs]) * scale
    bd = torch.cat([torch.full((50,), -30.0), torch.full((50,), 30.0)])  # cost vs area, percent
    w, b = cal.fit_gate(x, bd, bd.abs())
    gate = torch.sigmoid(x @ w + b)
    assert (gate[:50] > 0.5).all() and (gate[50:] < 0.5).all()


def _nontrivial_model():
    model = ROIDownsampler(DownsamplerConfig(scale_factor=2))
    with torch.no_grad():
        model.analyzer.head[2].bias.zero_()  # background simplified and held at mid strength
    return model.eval()


def test_closed_gate_gives_area_and_the_model_is_left_as_it_was():
    model = _nontrivial_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frames, masks = moving_square_frames(n=6)
    clip = cal.CalibrationClip("square", frames, [m.astype(np.float32) / 255 for m in masks])
    closed, _, feats = cal.run_with_gate(model, clip, 0.0)
    opened, softs, _ = cal.run_with_gate(model, clip, 1.0)
    area = [f.reshape(24, 2, 32, 2, 3).mean((1, 3)) for f in frames]
    assert max(np.abs(c.astype(float) - a).max() for c, a in zip(closed, area)) <= 1
    assert max(np.abs(o.astype(float) - a).max() for o, a in zip(opened, area)) > 5
    assert feats.shape == (6, 4) and torch.isfinite(feats).all() and len(softs) == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.filterwarnings("ignore:Insufficient curve overlap")  # tiny clips: short RD curves
def test_calibration_writes_a_loadable_checkpoint_and_keeps_the_input(tmp_path, monkeypatch):
    import demo_data
    monkeypatch.setattr(demo_data, "CACHE", tmp_path / "cache")
    dataset = make_davis(tmp_path / "davis", names=("a", "b"), n=10)
    src, out = tmp_path / "in.pth", tmp_path / "out.pth"
    train_args = {"epochs": 1, "val_sequences": "b"}
    save_checkpoint(src, _nontrivial_model(), train_args=train_args)
    original = src.read_bytes()
    code = cal.main(["--checkpoint_path", str(src), "--dataset_path", str(dataset), "--clip_length", "8",
                     "--output_path", str(out)])
    assert code == 0 and src.read_bytes() == original
    model, ckpt = load_model(out, expected_scale=2)
    report = ckpt["gate_calibration"]
    assert [c["clip"] for c in report["clips"]] == ["a@0"]  # the training sequence only, one window
    assert ckpt["train_args"] == train_args
    assert not torch.equal(model.analyzer.gate.weight, torch.zeros(1, 4))
    chosen, scores = report["mask_memory_bias"], report["mask_memory_scores"]
    assert set(scores) >= {-2.0, -4.0, -8.0} and scores[chosen] == min(scores.values())
    assert float(model.temporal.gate.bias.detach()) == pytest.approx(chosen)
    assert "bg_gate" in PARAM_NAMES


def test_clips_the_mask_memory_search_skipped_still_get_a_verdict(tmp_path, monkeypatch):
    """When a shorter mask memory wins, the clips it was not judged on (where the open gate did
    not pay) are measured again with it rather than dropped."""
    import demo_data
    monkeypatch.setattr(demo_data, "CACHE", tmp_path / "cache")
    dataset = make_davis(tmp_path / "davis", names=("a", "b", "c"), n=10)
    src, out = tmp_path / "in.pth", tmp_path / "out.pth"
    save_checkpoint(src, _nontrivial_model(), train_args={"val_sequences": "c"})
    calls = []

    def fake_verdict(model, clip, ref):
        bias = float(model.temporal.gate.bias.detach())
        calls.append((clip.name, bias))
        pays = clip.name.startswith("a")
        return (-1.0 if bias > -8 else -2.0) if pays else 1.0
    monkeypatch.setattr(cal, "verdict", fake_verdict)
    code = cal.main(["--checkpoint_path", str(src), "--dataset_path", str(dataset), "--clip_length", "8",
                     "--output_path", str(out)])
    assert code == 0
    report = load_model(out)[1]["gate_calibration"]
    assert report["mask_memory_bias"] == -8.0
    assert {c["clip"]: c["bytes_vs_area_pct"] for c in report["clips"]} == {"a@0": -2.0, "b@0": 1.0}
    assert ("b@0", -8.0) in calls  # re-measured with the chosen memory
