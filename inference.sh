#!/usr/bin/env bash
# Downsample a video (default: the embedded demo clip). Extra arguments go to inference.py, e.g.
#   bash inference.sh --input_dir my_clip.mp4 --output_dir output/my_clip --scale_factor 4 --debug
# Relative paths are taken from where you run it, as with any command.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
source "$ROOT/setup_env.sh"
exec "$PY" "$ROOT/inference.py" "$@"
