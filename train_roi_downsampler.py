"""Train the ROI downsampler.

    python train_roi_downsampler.py --dataset_path data/my_clips --output_dir output/train_x2 --scale_factor 2
    torchrun --nproc_per_node 2 train_roi_downsampler.py ...      # multi-GPU (DDP)

The loop reads top to bottom: data -> masks (cached once) -> model/loss/optimiser -> resume ->
epochs of (train, validate, log, checkpoint). Ctrl-C saves latest.pth; --resume continues from
the exact step, because every sample's randomness is a function of (seed, epoch, index).
"""
from __future__ import annotations

import sys

if __name__ == "__main__":  # before the heavy imports: Ctrl-C while they load is one line
    from errors import quiet_interrupts
    quiet_interrupts()

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import data
import metrics
from blip_clip_loss import (CombinedLoss, LossWeights, PerceptualUnavailable, area_reference, load_perceptual,
                            rate_proxy, tensor_roi_at_output)
from engine import pick_device, tensor_to_frames
from errors import UserError, no_interrupts, run_cli, warn
from roi_downsampler import DEFAULT_BACKGROUND_QUALITY, DownsamplerConfig, ROIDownsampler
from roi_sources import RoiOptions, add_roi_args, check_roi_options
from video_io import check_apart


# the RoiOptions training offers (roi_sources.add_roi_args): it runs the detector on every frame, alone,
# and the annotations of the dataset are its masks
TRAINING_ROI_FLAGS = ("roi_source", "seg_model_path", "roi_classes", "conf", "seg_imgsz")


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
    background_quality: float = DEFAULT_BACKGROUND_QUALITY  # train under the floor inference applies
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
    roi: RoiOptions = field(default_factory=lambda: RoiOptions(roi_motion="off"))  # set by TRAINING_ROI_FLAGS
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
        "dataset_path": "DAVIS root (2016/2017 layout), folder of sequences, folder of videos, or one clip; "
                        "several, comma-separated, are trained on together",
        "perceptual_model": "yolo:PATH (a frozen YOLO .pt's features; what train.sh uses) | clip | blip, several "
                            "joined by + | none",
        "allow_missing_perceptual": "train without the perceptual term if its weights cannot be loaded",
        "resume": "continue from output_dir/checkpoints/latest.pth",
        "background_quality": "background PSNR floor against area (dB) applied while training, as inference "
                              "applies it (0 = off)",
        "val_sequences": "comma-separated sequence names to validate on (default: --val_fraction by name hash)",
        "steps_per_epoch": "optimiser steps per epoch",
        "device": "auto (CUDA when present) | cpu | cuda",
        "export": "copy best.pth here at the end, e.g. models/roi_downsampler_x2.pth",
    }
    add_roi_args(p, only=TRAINING_ROI_FLAGS, source_help=(
        "what the network sees: auto (annotations where present, else YOLO, else motion) | yolo | motion (for "
        "every sequence; annotations, where present, are what the losses score) | masks"))
    for name, f in TrainConfig.__dataclass_fields__.items():
        if name == "roi":
            continue
        if f.type == "bool":
            p.add_argument(f"--{name}", action="store_true", help=helps.get(name))
        else:
            typ = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(f"--{name}", type=typ, default=f.default, help=helps.get(name),
                           required=name == "dataset_path")
    args = p.parse_args(argv)
    roi = check_roi_options(replace(TrainConfig().roi, **{k: getattr(args, k) for k in TRAINING_ROI_FLAGS}))
    cfg = TrainConfig(roi=roi, **{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__ if k != "roi"})
    if cfg.scale_factor not in (2, 4):
        raise UserError(f"--scale_factor {cfg.scale_factor}: use 2 or 4")
    if not (cfg.background_quality == 0 or 10 <= cfg.background_quality <= 100):
        raise UserError(f"--background_quality must be 0 (off) or 10..100 dB, got {cfg.background_quality}")
    for name in ("epochs", "batch_size", "clip_length", "steps_per_epoch"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0) or not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"--lr must be > 0 and --weight_decay >= 0, got {cfg.lr}, {cfg.weight_decay}")
    if cfg.workers < 0:
        raise UserError(f"--workers must be >= 0, got {cfg.workers}")
    datasets = {f"--dataset_path {p}": p for p in cfg.dataset_path.split(",") if p}
    check_apart(cfg.output_dir, "--output_dir", {**datasets, "--seg_model_path": cfg.roi.seg_model_path})
    return cfg


# ----------------------------------------------------------------------------- setup


def setup_distributed():
    """(rank, world_size); initialises DDP when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states as plain data (a checkpoint holds no pickled objects, see checkpoint.py)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model, loss_fn, val_set, device, scale: int, crf: int = 28) -> dict:
    """Validation loss, and what the user cares about, for the model and for plain area:
    x264 bytes at one CRF, ROI-PSNR after decoding (inside the scoring masks), background rate
    proxy, background flicker."""
    model.eval()
    totals = {"loss": 0.0, "model_bytes": 0, "area_bytes": 0, "model_roi_psnr": 0.0, "area_roi_psnr": 0.0,
              "model_rate_proxy": 0.0, "area_rate_proxy": 0.0, "model_flicker": 0.0, "area_flicker": 0.0}
    n = len(val_set)
    for i in range(n):
        frames, masks_in, masks_score = (t[None].to(device) for t in val_set[i])
        out = model(frames, masks_in)
        loss, _ = loss_fn(out, frames, masks_score)
        ref = area_reference(frames, scale)
        roi = tensor_roi_at_output(masks_score, scale)
        totals["loss"] += float(loss) / n
        ref8 = tensor_to_frames(ref[0])
        roi3 = np.repeat(roi[0, :, 0].cpu().numpy()[..., None] > 0, 3, -1)  # (T,h,w,3) like the frames
        for name, video in (("model", out.frames), ("area", ref)):
            totals[f"{name}_rate_proxy"] += float(rate_proxy(video, roi)) / n
            v8 = tensor_to_frames(video[0])
            point, _ = metrics.rd_point(list(v8), ref8, roi3, crf, 25.0)
            totals[f"{name}_bytes"] += point["bytes"]
            totals[f"{name}_roi_psnr"] += point["roi_psnr"] / n
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
        axes[0].plot(ep, [r["train"].get(k, float("nan")) for r in rows], marker="o", label=k)
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


def append_jsonl(path: Path, row: dict):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def print_epoch(epoch: int, seconds: float, val: dict):
    print(f"epoch {epoch}: {seconds:.1f}s, val loss {val['loss']:.4f}, x264 bytes {val['model_bytes']} vs area "
          f"{val['area_bytes']} ({val['bytes_saved_pct']:+.1f}% saved), ROI-PSNR {val['model_roi_psnr']:.2f} vs "
          f"{val['area_roi_psnr']:.2f} dB, bg flicker {val['model_flicker']:.2f} vs {val['area_flicker']:.2f}")


# ----------------------------------------------------------------------------- main loop


@dataclass
class Run:
    """Everything one training run holds; built by setup(), carried through the epochs."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    run_dir: Path
    train_set: data.ClipDataset
    val_set: Optional[data.ClipDataset]
    model: ROIDownsampler
    net: torch.nn.Module
    loss_fn: CombinedLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0            # the epoch in progress (0-based)
    step: int = 0             # optimiser steps done in it
    best_score: float = float("inf")
    sums: Optional[dict] = None  # running sums of the loss components in this epoch (exact resume)
    count: int = 0

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def latest(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pth"

    @property
    def best(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pth"

    def save(self, path: Path, metrics: Optional[dict] = None):
        """Everything --resume needs: the position (epoch, step), the epoch's running loss sums."""
        if self.main_process:
            checkpoint.save(path, self.model, optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                            epoch=self.epoch, step=self.step, best_score=self.best_score, rng=rng_state(),
                            partial={"sums": self.sums or {}, "count": self.count},
                            train_args=asdict(self.cfg), metrics=metrics or {})


def setup(cfg: TrainConfig) -> Run:
    """Data (masks cached, split by sequence), model, loss, optimiser; state from --resume."""
    rank, world = setup_distributed()
    device = pick_device(cfg.device)
    run_dir = Path(cfg.output_dir)
    latest = run_dir / "checkpoints" / "latest.pth"
    if latest.exists() and not cfg.resume:
        raise UserError(f"{latest} exists: pass --resume to continue that run, or choose another --output_dir")
    if cfg.resume and not latest.exists():
        raise UserError(f"--resume: {latest} not found; start without --resume")
    resumed = checkpoint.read(latest) if cfg.resume else None
    if resumed is not None:
        check_resumable(resumed, cfg, latest)
    if cfg.export:
        checkpoint.check_writable(cfg.export, "--export")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    found, train_seqs, val_seqs = data.prepare_sequences(cfg.dataset_path.split(","), cfg.roi, run_dir,
                                                         [v for v in cfg.val_sequences.split(",") if v],
                                                         cfg.val_fraction, rank)
    if rank == 0:
        print(f"dataset: {found.layout} layout, {len(train_seqs)} training / {len(val_seqs)} validation sequences"
              f" ({', '.join(s.name for s in val_seqs) or 'none'}), {len(found.skipped)} skipped")
    train_set = data.ClipDataset(train_seqs, cfg.clip_length, cfg.crop_size, cfg.scale_factor,
                                 cfg.steps_per_epoch * cfg.batch_size, cfg.seed, train=True)
    val_set = data.ClipDataset(val_seqs, cfg.val_frames, cfg.val_crop, cfg.scale_factor,
                               len(val_seqs), cfg.seed, train=False) if val_seqs else None

    model = ROIDownsampler(DownsamplerConfig(scale_factor=cfg.scale_factor)).to(device)
    model.set_background_floor(cfg.background_quality)
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
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    run = Run(cfg, rank, world, device, run_dir, train_set, val_set, model, net, loss_fn, optimizer, scheduler,
              scaler)
    if resumed is not None:
        ckpt = resumed
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        run.epoch, run.step, run.best_score = ckpt["epoch"], ckpt["step"], ckpt["best_score"]
        run.sums, run.count = dict(ckpt["partial"]["sums"]) or None, ckpt["partial"]["count"]
        set_rng_state(ckpt["rng"])
        if rank == 0:
            print(f"resuming {latest} at epoch {run.epoch + 1}, step {run.step}")
    elif rank == 0 and (run_dir / "train_log.jsonl").exists():
        (run_dir / "train_log.jsonl").unlink()
    return run


def check_resumable(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    """--resume continues the same run: a checkpoint with its training state, the same scale and
    schedule (a changed --epochs or --steps_per_epoch would silently redo or skip steps)."""
    missing = [k for k in checkpoint.RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"--resume: {path} holds weights only (no {', '.join(missing)}); it cannot be continued, "
                        f"start without --resume in another --output_dir")
    if int(ckpt.get("scale_factor", cfg.scale_factor)) != cfg.scale_factor:
        raise UserError(f"--resume: {path} is x{ckpt['scale_factor']} but --scale_factor is {cfg.scale_factor}")
    before = ckpt.get("train_args") or {}
    changed = [f"--{k} {before[k]} -> {getattr(cfg, k)}" for k in ("epochs", "steps_per_epoch", "batch_size")
               if k in before and before[k] != getattr(cfg, k)]
    if changed:
        raise UserError(f"--resume: the run was started with other settings ({'; '.join(changed)}); resume with "
                        f"the same ones or start a new --output_dir")


def train_one_epoch(run: Run) -> None:
    """The optimiser steps of epoch run.epoch from step run.step on; run.step/sums follow each step.
    Steps are global: with N processes each local step is N of them (rank r takes the batches
    r, r+N, ...), so the schedule, the position saved for --resume and the epoch length do not
    depend on N."""
    cfg = run.cfg
    use_amp = run.device.type == "cuda"
    run.train_set.epoch = run.epoch
    batches = [list(range(i * cfg.batch_size, (i + 1) * cfg.batch_size))
               for i in range(run.step, cfg.steps_per_epoch) if i % run.world == run.rank]
    loader = torch.utils.data.DataLoader(run.train_set, batch_sampler=batches, num_workers=cfg.workers)
    bar = tqdm(loader, desc=f"epoch {run.epoch + 1}/{cfg.epochs}", unit="step", disable=not run.main_process,
               initial=run.step, total=cfg.steps_per_epoch)
    run.sums = run.sums or {}
    for frames, masks_in, masks_score in bar:
        frames, masks_in, masks_score = frames.to(run.device), masks_in.to(run.device), masks_score.to(run.device)
        with torch.autocast(run.device.type, enabled=use_amp):
            total, parts = run.loss_fn(run.net(frames, masks_in), frames, masks_score)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(total).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        for _ in range(run.world):
            run.scheduler.step()
        run.step += run.world
        for k, v in parts.items():
            run.sums[k] = run.sums.get(k, 0.0) + v
        run.count += 1
        bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})


def end_of_epoch(run: Run, seconds: float) -> dict:
    """Validate, log, plot, and checkpoint (best.pth when validation improved, latest.pth always);
    then move the position to the start of the next epoch."""
    row = {}
    if run.main_process:
        val = validate(run.model, run.loss_fn, run.val_set, run.device, run.cfg.scale_factor) if run.val_set else {}
        row = {"epoch": run.epoch + 1, "seconds": seconds, "lr": run.scheduler.get_last_lr()[0],
               "train": {k: v / max(1, run.count) for k, v in (run.sums or {}).items()}, "val": val}
        append_jsonl(run.run_dir / "train_log.jsonl", row)
        if val:
            print_epoch(run.epoch + 1, seconds, val)
            plot_curves(run.run_dir / "train_log.jsonl", run.run_dir / "training_curves.png")
    run.epoch, run.step, run.sums, run.count = run.epoch + 1, 0, None, 0
    if run.main_process:
        score = row["val"].get("loss", row["train"].get("roi", 0.0))
        if score < run.best_score:
            run.best_score = score
            run.save(run.best, row)
        run.save(run.latest, row)
    return row


def train(cfg: TrainConfig) -> dict:
    run = setup(cfg)
    row = {}
    try:
        while run.epoch < cfg.epochs:
            t0 = time.time()
            train_one_epoch(run)
            row = end_of_epoch(run, time.time() - t0)
    except KeyboardInterrupt:
        # the position saved is exact: an interrupt during validation resumes at "all steps done",
        # which validates the finished epoch and goes on (the epoch's loss sums are kept too); a
        # second Ctrl-C waits for the save
        with no_interrupts():
            run.save(run.latest, {"interrupted": True})
        if run.main_process:
            print(f"\ninterrupted: saved {run.latest} (epoch {run.epoch + 1}, step {run.step}); continue with "
                  f"--resume", file=sys.stderr)
        raise
    if run.main_process and cfg.export:
        checkpoint.export(run.best, cfg.export)
        print(f"exported {run.best} -> {cfg.export}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"val": row.get("val", {}), "best_score": run.best_score, "checkpoint": str(run.best)}


def main(argv=None) -> int:
    def run(argv):
        result = train(parse_args(argv))
        print(f"done: best checkpoint {result['checkpoint']}")
    return run_cli(run, argv, "saved checkpoints/latest.pth; continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
