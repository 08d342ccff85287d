"""Train the ROI downsampler.

    python train_roi_downsampler.py --dataset_path data/my_clips --output_dir output/train_x2 --scale_factor 2
    torchrun --nproc_per_node 2 train_roi_downsampler.py ...      # multi-GPU (DDP)

The loop reads top to bottom: data -> masks (cached once) -> model/loss/optimiser -> resume ->
epochs of (train, validate, log, checkpoint). Ctrl-C saves latest.pth; --resume continues from
the exact step, because every sample's randomness is a function of (seed, epoch, index).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
from blip_clip_loss import (CombinedLoss, LossWeights, PerceptualUnavailable, area_reference, load_perceptual,
                            rate_proxy, roi_at_output)
from roi_downsampler import (DownsamplerConfig, ROIDownsampler, pick_device, read_checkpoint, save_checkpoint,
                             tensor_to_frames)
from roi_sources import (DEFAULT_ROI_CLASSES, DEFAULT_SEG_MODEL, KeyframeSource, MotionSource, YoloSegmenter,
                         YoloUnavailable, load_yolo, warn)
from video_io import UserError, atomic_write_bytes, encode_h264_bytes, plain_warnings


@dataclass
class TrainConfig:
    dataset_path: str = ""
    output_dir: str = "output/train"
    epochs: int = 5
    batch_size: int = 4
    perceptual_weight: float = LossWeights.perceptual  # loss defaults live in blip_clip_loss.LossWeights
    roi_weight: float = LossWeights.roi
    temporal_weight: float = LossWeights.temporal
    rate_weight: float = LossWeights.rate
    background_weight: float = LossWeights.background
    boundary_weight: float = LossWeights.boundary
    scale_factor: int = 2
    lr: float = 5e-3
    weight_decay: float = 0.0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    clip_length: int = 4
    crop_size: int = 128
    steps_per_epoch: int = 200
    val_fraction: float = 0.2
    val_sequences: str = ""
    val_frames: int = 12
    val_crop: int = 0  # 0 = whole frames
    roi_source: str = "auto"
    seg_model_path: str = DEFAULT_SEG_MODEL
    roi_classes: str = DEFAULT_ROI_CLASSES
    perceptual_model: str = "clip"
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    blip_model: str = "Salesforce/blip-image-captioning-base"
    allow_missing_perceptual: bool = False
    resume: bool = False
    export: str = ""   # also copy the best checkpoint here (e.g. models/roi_downsampler_x2.pth)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = {
        "dataset_path": "DAVIS-2017 root, folder of sequences, folder of videos, or one clip",
        "roi_source": "auto (annotations, else YOLO, else motion) | yolo | motion | masks",
        "perceptual_model": "clip | blip | clip+blip | none",
        "allow_missing_perceptual": "train without the perceptual term if its weights cannot be loaded",
        "resume": "continue from output_dir/checkpoints/latest.pth",
        "val_sequences": "comma-separated sequence names to validate on (default: --val_fraction by name hash)",
        "steps_per_epoch": "optimiser steps per epoch",
        "device": "auto (CUDA when present) | cpu | cuda",
        "export": "copy best.pth here at the end, e.g. models/roi_downsampler_x2.pth",
    }
    for name, f in TrainConfig.__dataclass_fields__.items():
        if f.type == "bool":
            p.add_argument(f"--{name}", action="store_true", help=helps.get(name))
        else:
            typ = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(f"--{name}", type=typ, default=f.default, help=helps.get(name),
                           required=name == "dataset_path")
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    if cfg.scale_factor not in (2, 4):
        raise UserError(f"--scale_factor {cfg.scale_factor}: use 2 or 4")
    for name in ("epochs", "batch_size", "clip_length", "steps_per_epoch"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    return cfg


# ----------------------------------------------------------------------------- setup helpers


def setup_distributed():
    """(rank, world_size); initialises DDP when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size()


def mask_source_factory(cfg: TrainConfig):
    """(key, factory) for sequences without annotations, following --roi_source."""
    kind = cfg.roi_source
    if kind == "masks":
        return None, None
    if kind in ("auto", "yolo"):
        try:
            model = load_yolo(cfg.seg_model_path)
            st = Path(cfg.seg_model_path).stat() if Path(cfg.seg_model_path).is_file() else None
            key = data.source_key({"yolo": str(cfg.seg_model_path), "size": st and st.st_size,
                                   "mtime": st and st.st_mtime_ns, "classes": cfg.roi_classes})
            seg = KeyframeSource(YoloSegmenter(model, cfg.roi_classes), interval=1)  # every frame, stateless
            return key, lambda: seg
        except YoloUnavailable as e:
            if kind == "yolo":
                raise
            warn(f"{e} -- sequences without annotations use --roi_source motion")
    return data.source_key({"motion": MotionSource.VERSION}), MotionSource


def prepare_sequences(cfg: TrainConfig, run_dir: Path, rank: int):
    found = data.discover(cfg.dataset_path, run_dir / "cache")
    needs_masks = any(s.masks is None for s in found.sequences)
    key, factory = mask_source_factory(cfg) if needs_masks else (None, None)
    seqs = []
    for s in found.sequences:
        if s.masks is None:
            if factory is None:
                found.skipped.append(f"{s.name}: no annotation masks (--roi_source masks)")
                continue
            if rank == 0:
                s = data.cache_masks(s, factory, key, run_dir / "cache" / "masks")
        seqs.append(s)
    if dist.is_initialized():
        dist.barrier()
        seqs = [s if s.masks is not None else data.cache_masks(s, factory, key, run_dir / "cache" / "masks")
                for s in seqs]
    val_names = [v for v in cfg.val_sequences.split(",") if v]
    train, val = data.split_sequences(seqs, cfg.val_fraction, val_names)
    return found, train, val


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model, loss_fn, val_set, device, scale: int, crf: int = 28) -> dict:
    """Validation loss, and what the user cares about, for the model and for plain area:
    x264 bytes at one CRF, ROI-PSNR after decoding, background rate proxy, background flicker."""
    import metrics
    model.eval()
    totals = {"loss": 0.0, "model_bytes": 0, "area_bytes": 0, "model_roi_psnr": 0.0, "area_roi_psnr": 0.0,
              "model_rate_proxy": 0.0, "area_rate_proxy": 0.0, "model_flicker": 0.0, "area_flicker": 0.0}
    n = len(val_set)
    for i in range(n):
        frames, masks = (t[None].to(device) for t in val_set[i])
        out = model(frames, masks)
        loss, _ = loss_fn(out, frames, masks)
        ref = area_reference(frames, scale)
        roi = roi_at_output(masks, scale)
        totals["loss"] += float(loss) / n
        ref8 = tensor_to_frames(ref[0])
        roi3 = np.repeat(roi[0, :, 0].cpu().numpy()[..., None] > 0, 3, -1)  # (T,h,w,3) like the frames
        for name, video in (("model", out.frames), ("area", ref)):
            totals[f"{name}_rate_proxy"] += float(rate_proxy(video, roi)) / n
            v8 = tensor_to_frames(video[0])
            size, decoded = encode_h264_bytes(list(v8), 25.0, crf, preset="veryfast")
            totals[f"{name}_bytes"] += size
            totals[f"{name}_roi_psnr"] += metrics.masked_psnr(np.stack(decoded), ref8, roi3) / n
            totals[f"{name}_flicker"] += metrics.flicker(v8, ref8, ~roi3) / n
    totals["bytes_saved_pct"] = 100 * (1 - totals["model_bytes"] / max(1, totals["area_bytes"]))
    model.train()
    return totals


# ----------------------------------------------------------------------------- logging


def plot_curves(log_path: Path, png_path: Path):
    """Training curves (loss components per epoch, validation bytes and ROI-PSNR) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from debug_viz import save_figure
    rows = [json.loads(l) for l in log_path.read_text().splitlines() if l.strip()]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k in rows[0]["train"]:
        axes[0].plot(ep, [r["train"][k] for r in rows], marker="o", label=k)
    axes[0].set_yscale("log"), axes[0].set_title("training loss components"), axes[0].legend(fontsize=7)
    axes[1].plot(ep, [r["val"]["model_bytes"] for r in rows], marker="o", label="model")
    axes[1].plot(ep, [r["val"]["area_bytes"] for r in rows], "--", label="area")
    axes[1].set_title("validation x264 bytes (CRF 28)"), axes[1].legend(fontsize=7)
    axes[2].plot(ep, [r["val"]["model_roi_psnr"] for r in rows], marker="o", label="model")
    axes[2].plot(ep, [r["val"]["area_roi_psnr"] for r in rows], "--", label="area")
    axes[2].set_title("validation ROI-PSNR after x264 (dB)"), axes[2].legend(fontsize=7)
    for a in axes:
        a.set_xlabel("epoch"), a.grid(alpha=0.3)
    save_figure(fig, png_path)


def export_checkpoint(src: Path, dst) -> None:
    """Copy a checkpoint for shipping: model, config, training args and metrics, without the
    optimiser/scheduler/RNG state that only --resume needs."""
    import io
    ckpt = {k: v for k, v in read_checkpoint(src).items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(dst, buf.getvalue())


def append_jsonl(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- main loop


def train(cfg: TrainConfig) -> dict:
    rank, world = setup_distributed()
    main_process = rank == 0
    device = pick_device(cfg.device)
    run_dir = Path(cfg.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    latest, best = ckpt_dir / "latest.pth", ckpt_dir / "best.pth"
    if latest.exists() and not cfg.resume:
        raise UserError(f"{latest} exists: pass --resume to continue that run, or choose another --output_dir")
    if cfg.resume and not latest.exists():
        raise UserError(f"--resume: {latest} not found; start without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    # data: sequences, cached masks, split by sequence
    found, train_seqs, val_seqs = prepare_sequences(cfg, run_dir, rank)
    if main_process:
        print(f"dataset: {found.layout} layout, {len(train_seqs)} training / {len(val_seqs)} validation sequences"
              f" ({', '.join(s.name for s in val_seqs) or 'none'}), {len(found.skipped)} skipped")
    train_set = data.ClipDataset(train_seqs, cfg.clip_length, cfg.crop_size, cfg.scale_factor,
                                 cfg.steps_per_epoch * cfg.batch_size, cfg.seed, train=True)
    val_set = data.ClipDataset(val_seqs, cfg.val_frames, cfg.val_crop, cfg.scale_factor,
                               len(val_seqs), cfg.seed, train=False) if val_seqs else None

    # model, loss, optimiser
    model = ROIDownsampler(DownsamplerConfig(scale_factor=cfg.scale_factor)).to(device)
    try:
        encoders = load_perceptual(cfg.perceptual_model, cfg.clip_model, cfg.clip_pretrained, cfg.blip_model)
    except PerceptualUnavailable as e:
        if not cfg.allow_missing_perceptual:
            raise UserError(f"{e} (or pass --allow_missing_perceptual)") from None
        warn(f"{e} -- training WITHOUT the perceptual term (--allow_missing_perceptual)")
        encoders = []
    weights = LossWeights(cfg.perceptual_weight if encoders else 0.0, cfg.roi_weight, cfg.temporal_weight,
                          cfg.rate_weight, cfg.background_weight, cfg.boundary_weight)
    loss_fn = CombinedLoss(weights, cfg.scale_factor, encoders).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)) * 0.95 + 0.05)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    # resume
    start_epoch, start_step, best_score = 0, 0, float("inf")
    if cfg.resume:
        ckpt = read_checkpoint(latest)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, best_score = ckpt["epoch"], ckpt["step"], ckpt["best_score"]
        set_rng_state(ckpt["rng"])
        if main_process:
            print(f"resuming {latest} at epoch {start_epoch + 1}, step {start_step}")

    def save(path, epoch, step, metrics=None):
        if main_process:
            save_checkpoint(path, model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), epoch=epoch, step=step, best_score=best_score,
                            rng=rng_state(), train_args=asdict(cfg), metrics=metrics or {})

    log_path = run_dir / "train_log.jsonl"
    if main_process and not cfg.resume and log_path.exists():
        log_path.unlink()
    last_val = {}
    epoch, step = start_epoch, start_step
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_set.epoch = epoch
            first = start_step if epoch == start_epoch else 0
            batches = [list(range(i * cfg.batch_size, (i + 1) * cfg.batch_size))
                       for i in range(first, cfg.steps_per_epoch) if i % world == rank]
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=cfg.workers)
            sums, count, t0 = {}, 0, time.time()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not main_process,
                       initial=first, total=cfg.steps_per_epoch)
            for step_in_epoch, (frames, masks) in enumerate(bar, start=first):
                frames, masks = frames.to(device), masks.to(device)
                with torch.autocast(device.type, enabled=use_amp):
                    total, parts = loss_fn(net(frames, masks), frames, masks)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step = step_in_epoch + 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
            step = 0
            epoch_time = time.time() - t0
            train_means = {k: v / max(1, count) for k, v in sums.items()}
            if main_process:
                last_val = validate(model, loss_fn, val_set, device, cfg.scale_factor) if val_set else {}
                score = last_val.get("loss", train_means.get("roi", 0.0))
                row = {"epoch": epoch + 1, "seconds": epoch_time, "lr": scheduler.get_last_lr()[0],
                       "train": train_means, "val": last_val}
                append_jsonl(log_path, row)
                if last_val:
                    print(f"epoch {epoch + 1}: {epoch_time:.1f}s, val loss {last_val['loss']:.4f}, x264 bytes "
                          f"{last_val['model_bytes']} vs area {last_val['area_bytes']} "
                          f"({last_val['bytes_saved_pct']:+.1f}% saved), ROI-PSNR {last_val['model_roi_psnr']:.2f} "
                          f"vs {last_val['area_roi_psnr']:.2f} dB, bg flicker {last_val['model_flicker']:.2f} "
                          f"vs {last_val['area_flicker']:.2f}")
                    plot_curves(log_path, run_dir / "training_curves.png")
                if score < best_score:
                    best_score = score
                    save(best, epoch + 1, 0, row)
                save(latest, epoch + 1, 0, row)
    except KeyboardInterrupt:
        save(latest, epoch, step, {"interrupted": True})
        if main_process:
            print(f"\ninterrupted: saved {latest} (epoch {epoch + 1}, step {step}); continue with --resume",
                  file=sys.stderr)
        raise
    if main_process and cfg.export:
        export_checkpoint(best, cfg.export)
        print(f"exported {best} -> {cfg.export}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"val": last_val, "best_score": best_score, "checkpoint": str(best)}


def main(argv=None) -> int:
    plain_warnings()
    try:
        cfg = parse_args(argv)
        result = train(cfg)
        print(f"done: best checkpoint {result['checkpoint']}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
