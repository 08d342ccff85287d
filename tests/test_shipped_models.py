"""The checkpoints in models/ load, and on a static scene with small moving objects they keep the
objects exactly; the network's output alone costs x264 about what area costs (trained on DAVIS
with detector masks, the networks simplify little on this synthetic scene), and the closed loop
around it saves bytes at the objects' quality."""
import numpy as np
import pytest
import torch

import demo_data
import metrics
import rd_control
from checkpoint import default_path as default_checkpoint, load_model
from engine import downsample as run_model
from metrics import roi_at_output
from video_io import encode_h264_bytes


@pytest.fixture(scope="module")
def scene():
    background = demo_data._cover(demo_data._load_rgb(demo_data.skimage_photo("coffee.png")), 384, 256)
    sprite = demo_data._cover(demo_data._load_rgb(demo_data.skimage_photo("astronaut.png")), 40, 56)
    frames, masks = demo_data.static_scene(background, [sprite, sprite[:, ::-1]], n_frames=12, seed=3)
    return list(frames), [m // 255 for m in masks]


@pytest.mark.parametrize("s", [2, 4])
def test_shipped_model_keeps_roi_and_saves_bytes(scene, s):
    model, ckpt = load_model(default_checkpoint(s), expected_scale=s)
    assert ckpt["train_args"]["scale_factor"] == s and "optimizer" not in ckpt
    frames, masks = scene
    torch.manual_seed(0)
    out = np.stack(run_model(model, frames, masks))
    area = out.copy()
    for i, f in enumerate(frames):
        h, w = f.shape[0] // s, f.shape[1] // s
        area[i] = f[:h * s, :w * s].reshape(h, s, w, s, 3).mean((1, 3)).round()
    roi = roi_at_output(masks, s)
    assert metrics.masked_psnr(out, area, roi) > 45  # objects as sharp as area keeps them
    model_bytes, _ = encode_h264_bytes(list(out), 25, 28)
    area_bytes, _ = encode_h264_bytes(list(area), 25, 28)
    assert model_bytes < 1.03 * area_bytes
    softs = [(metrics.block_max(m, s) * 255).astype(np.uint8) for m in masks]
    d = rd_control.decide({"area": list(area), "model": list(out)}, softs, rd_control.EncoderOptions(crf=28), 25)
    chosen = d.trials[d.choice.name]
    assert chosen["passes"] and chosen["bits"] < 0.9 * d.trials["area"]["bits"]
