"""Many videos on a Ray cluster: one Ray task per video, each written exactly as a single
`inference.py` run writes it, failures isolated, the same command resumable.

    python inference.py --input_dir videos/ --output_dir out/ --ray local          # this machine
    RAY_ADDRESS=ray://head:10001 python inference.py --input_dir list.txt --output_dir /shared/out --ray auto

OUT/<name>/ holds each video's result (video.mp4, report.json, ...); OUT/summary.csv and
summary.json hold one row per video: status (done, skipped: already complete, failed), the
one-line error, frames, bytes, the closed loop's estimate of bytes against area at the same CRF
(with --compare_area: measured, with both object qualities), and frames/s. A task whose worker
died is retried once (Ray's max_retries); a bad video is recorded and the others go on; the run
exits 1 when any failed. Running it again skips complete results.
Workers must see the input paths and OUT (a shared file system) and the model files.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

from tqdm import tqdm

from errors import UserError
from video_io import atomic_write_bytes, check_apart, is_result_folder, is_video_file, list_frame_files

BATCH_MARKER = ".roi_downsampler_batch"
FIELDS = ("name", "input", "status", "error", "frames", "video_bytes", "trial_bytes_vs_area_pct", "area_video_bytes",
          "bytes_vs_area_pct", "roi_psnr", "area_roi_psnr", "overall_fps")


def list_inputs(path: Path) -> list[tuple[str, Path]]:
    """(name, input) of every video or frame folder: a folder of them, or a text file of paths."""
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
        items = [Path(l) if Path(l).is_absolute() else path.parent / l for l in lines]
    elif path.is_dir():
        items = sorted(p for p in path.iterdir() if not p.name.startswith(".") and
                       (is_video_file(p) or (p.is_dir() and list_frame_files(p))))
    else:
        raise UserError(f"--input_dir {path}: with --ray, give a folder of videos / frame folders or a .txt file "
                        f"of paths, one per line")
    named: dict[str, Path] = {}
    for p in items:
        name = p.stem if p.suffix else p.name
        if name in named:
            raise UserError(f"{named[name]} and {p} would both be written to OUTPUT_DIR/{name}; rename one of them")
        named[name] = p
    if not named:
        raise UserError(f"--input_dir {path}: no videos or frame folders found")
    return list(named.items())


def check_output(out: Path, inputs) -> None:
    """OUT is new, empty, or an earlier batch of ours (resumed); never anything else."""
    check_apart(out, "--output_dir", {f"input {name}": p for name, p in inputs})
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / BATCH_MARKER).is_file():
        raise UserError(f"--output_dir {out}: holds files this tool did not write; choose an empty or new folder "
                        f"(an earlier --ray run there is resumed)")


def complete(result: Path) -> bool:
    return result.is_dir() and is_result_folder(result) and (result / "report.json").is_file()


def row(name: str, src, status: str, error: str = "", report: dict | None = None) -> dict:
    """One line of the summary."""
    return {"name": name, "input": str(src), "status": status, "error": error,
            **{k: v for k, v in (report or {}).items() if k in FIELDS}}


def run_one(single, cfg, name: str, src: str, out: str) -> dict:
    """One video as a single inference.py run (`single`: inference.run) writes it, in a Ray worker:
    a row of the summary, never an exception for bad input (the others go on)."""
    from errors import describe_os_error
    cfg = dataclasses.replace(cfg, input_dir=src, output_dir=out, ray=None)
    try:
        report = single(cfg)[0]
    except UserError as e:
        return row(name, src, "failed", str(e))
    except OSError as e:
        return row(name, src, "failed", describe_os_error(e, out))
    return row(name, src, "done", report=report)


def connect(address: str) -> None:
    """--ray local: a Ray instance on this machine; auto: the cluster of RAY_ADDRESS or `ray start`;
    anything else: that cluster's address. A cluster gets this code shipped along (not the venv,
    caches or results)."""
    import ray
    from paths import REPO
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
                     include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False, runtime_env={
                "working_dir": str(REPO), "excludes": [".venv", ".cache", "output", ".git", "docs"]})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"--ray {address}: cannot reach a Ray cluster ({type(e).__name__}); start one with "
                        f"`ray start --head`, set RAY_ADDRESS, or use --ray local") from None


def run(cfg, single) -> int:
    """--ray: every video of cfg.input_dir as its own Ray task running single(cfg) (inference.run);
    returns the exit code."""
    import ray
    out = Path(cfg.output_dir)
    inputs = list_inputs(Path(cfg.input_dir))
    check_output(out, inputs)
    out.mkdir(parents=True, exist_ok=True)
    (out / BATCH_MARKER).touch()
    rows, todo = {}, []
    for name, src in inputs:
        if complete(out / name):
            rows[name] = row(name, src, "skipped", report=json.loads((out / name / "report.json").read_text()))
        else:
            todo.append((name, src))
    threads = cfg.threads or 1
    if todo:
        connect(cfg.ray)
        task = ray.remote(run_one).options(num_cpus=threads, max_retries=1)
        pending = {task.remote(single, dataclasses.replace(cfg, threads=threads), name, str(src), str(out / name)): name
                   for name, src in todo}
        with tqdm(total=len(inputs), initial=len(rows), desc="videos", unit="video") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(done[0])
                try:
                    rows[name] = ray.get(done[0])
                except ray.exceptions.RayError as e:  # the worker died twice, or the task could not run
                    rows[name] = row(name, dict(todo)[name], "failed",
                                     f"{type(e).__name__}: the Ray task failed after one retry")
                bar.update()
        ray.shutdown()
    ordered = [rows[name] for name, _ in inputs]
    write_summary(out, ordered)
    failed = [r for r in ordered if r["status"] == "failed"]
    print(f"{len(ordered) - len(failed)} of {len(ordered)} videos done ({sum(r['status'] == 'skipped' for r in ordered)}"
          f" already complete); summary in {out}/summary.csv")
    if failed:
        print(f"{len(failed)} failed: " + "; ".join(f"{r['name']}: {r['error']}" for r in failed))
        return 1
    return 0


def write_summary(out: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "summary.csv", text.getvalue().encode())
    atomic_write_bytes(out / "summary.json", json.dumps(rows, indent=2).encode())
