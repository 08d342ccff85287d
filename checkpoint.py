"""Checkpoint files: one format for training, resuming, shipping and calibration.

A checkpoint is a dict ``{format, format_version, config, scale_factor, model, ...extra}`` saved
with ``torch.save`` and written atomically. It is read with ``torch.load(weights_only=True)``:
only tensors, numbers, strings and containers of them are accepted, so a downloaded ``.pth``
that carries a pickled object (which could run code while loading) is refused, never executed.
"""
from __future__ import annotations

import io
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from errors import UserError
from roi_downsampler import DownsamplerConfig, ROIDownsampler
from video_io import atomic_write_bytes

FORMAT = "roi-downsampler"
VERSION = 2            # 2: background gate in the sequence analyser
FORMAT_KEYS = ("format", "format_version", "config", "scale_factor", "model")  # written by save(), not by callers
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "epoch", "step", "best_score", "partial")  # only --resume needs these
_NOT_SAVED = ("analyzer.low", "analyzer.high")  # derived buffers that format v1 still stored
REPO = Path(__file__).resolve().parent


def default_path(scale: int) -> Path:
    """Where the shipped checkpoint for a scale factor lives: models/roi_downsampler_x{s}.pth."""
    return REPO / "models" / f"roi_downsampler_x{scale}.pth"


def save(path, model: ROIDownsampler, **extra) -> None:
    """Format tag and version, config, weights, scale, plus `extra` (training args, metrics,
    optimiser/scheduler/RNG state for --resume): plain data only, written atomically."""
    clash = set(extra) & set(FORMAT_KEYS)
    if clash:
        raise ValueError(f"checkpoint keys {sorted(clash)} are written by save() itself")
    payload = {"format": FORMAT, "format_version": VERSION, "config": asdict(model.cfg),
               "scale_factor": model.scale_factor, "model": model.state_dict(), **extra}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def read(path) -> dict:
    """Load and validate a checkpoint file; UserError (one line) for anything wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train one with `bash train.sh` or pass "
                        f"--checkpoint_path to an existing .pth")
    import zipfile
    if not zipfile.is_zipfile(path):  # every torch.save since PyTorch 1.6 is a zip archive
        raise UserError(f"{path}: not a PyTorch checkpoint (corrupt, truncated, or another format); use a "
                        f".pth written by train_roi_downsampler.py (e.g. models/roi_downsampler_x2.pth)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported" in str(e):
            raise UserError(f"{path}: refused: the file holds Python objects besides weights (loading it could "
                            f"run code); use a checkpoint written by train_roi_downsampler.py") from None
        raise UserError(f"{path}: not a readable checkpoint (UnpicklingError); the file is corrupt or "
                        f"truncated, use another (e.g. models/roi_downsampler_x2.pth)") from None
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}); the file is corrupt "
                        f"or truncated, use another (e.g. models/roi_downsampler_x2.pth)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an ROI downsampler checkpoint; pass a .pth written by "
                        f"train_roi_downsampler.py")
    if not isinstance(ckpt.get("format_version", 0), int) or ckpt.get("format_version", 0) > VERSION:
        raise UserError(f"{path}: checkpoint format v{ckpt.get('format_version')} is newer than this code "
                        f"(v{VERSION}); update the code")
    missing = [k for k in FORMAT_KEYS[2:] if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {', '.join(missing)}; it is damaged or from another tool")
    if not isinstance(ckpt["scale_factor"], int) or isinstance(ckpt["scale_factor"], bool) \
            or ckpt["scale_factor"] not in (2, 4):
        raise UserError(f"{path}: checkpoint scale_factor {ckpt['scale_factor']!r} is not 2 or 4; "
                        f"the file is damaged or from another tool")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise UserError(f"{path}: checkpoint config/model entries are not dictionaries; the file is damaged")
    return ckpt


def load_model(path, expected_scale: Optional[int] = None) -> tuple[ROIDownsampler, dict]:
    """Rebuild the model from a checkpoint; checks the scale factor against `expected_scale`."""
    ckpt = read(path)
    if expected_scale is not None and ckpt["scale_factor"] != int(expected_scale):
        raise UserError(f"{path}: checkpoint is for x{ckpt['scale_factor']} but --scale_factor is "
                        f"{expected_scale}; pass --scale_factor {ckpt['scale_factor']} or a x{expected_scale} checkpoint")
    known = DownsamplerConfig.__dataclass_fields__
    config = {k: v for k, v in ckpt["config"].items() if k in known}
    config["scale_factor"] = ckpt["scale_factor"]
    try:
        model = ROIDownsampler(DownsamplerConfig(**config))
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: checkpoint config does not build a network ({e})") from None
    weights = {k: v for k, v in ckpt["model"].items() if k not in _NOT_SAVED}
    if ckpt.get("format_version", 0) < 2:  # v1 had no background gate: keep it open (as v1 behaved)
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith("analyzer.gate.")})
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit this network (missing: {', '.join(missing) or 'none'}; "
                        f"unexpected: {', '.join(unexpected) or 'none'})")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit this network ({str(e).splitlines()[-1].strip()})") from None
    return model.eval(), ckpt


def export(src, dst) -> None:
    """Copy a checkpoint for shipping: model, config, training args and metrics, without the
    optimiser/scheduler/RNG state that only --resume needs."""
    ckpt = read(src)
    model, _ = load_model(src)
    save(dst, model, **{k: v for k, v in ckpt.items() if k not in FORMAT_KEYS + RESUME_KEYS})


def check_writable(path, flag: str) -> None:
    """Fail early (before hours of training) when `path` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    import os
    if p.is_dir() or not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"{flag} {path}: cannot be written here (a folder, or no write permission); choose "
                        f"another path")
