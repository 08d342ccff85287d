#!/usr/bin/env bash
# Downsample a video (default: the embedded demo clip). Extra arguments go to inference.py, e.g.
#   bash inference.sh --input_dir my_clip.mp4 --output_dir output/my_clip --scale_factor 4 --debug
set -euo pipefail
cd "$(dirname "$0")"
source ./setup_env.sh
exec "$PY" inference.py "$@"
