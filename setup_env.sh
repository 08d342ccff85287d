# Sourced by inference.sh, train.sh and tests/run.sh: find or build a Python environment with
# requirements.txt installed, and export PY (the interpreter to use).
#  - an already active virtualenv/conda env that has the packages is used as is;
#  - otherwise ./.venv is created (first run: a few minutes) and re-synced whenever
#    requirements.txt changes. Where no NVIDIA GPU is visible, PyTorch's CPU build is installed
#    first (pip's default is a CUDA build: 5 GB more disk, ~0.45 GB more memory at run time, 2 s
#    more start-up); TORCH_INDEX_URL overrides where torch comes from ('' = pip's default).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# PyTorch's CPU build into a new venv where no NVIDIA GPU is visible, before requirements.txt
# (which then keeps it); $1: the venv's python
torch_first() {
    local index="https://download.pytorch.org/whl/cpu"
    if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then index=""; fi
    index="${TORCH_INDEX_URL-$index}"
    if [ -z "$index" ] || "$1" -c 'import torch, torchvision' >/dev/null 2>&1; then return; fi
    # probed first: pip would retry an unreachable index for every package, for minutes
    if ! "$1" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=10)' \
            "$index" >/dev/null 2>&1; then
        echo "note: $index cannot be reached; taking pip's default torch (a CUDA build: more memory)" >&2
    elif ! "$1" -m pip install -q torch torchvision --index-url "$index" >&2; then
        echo "note: torch from $index failed; taking pip's default build instead" >&2
    fi
}
_probe='import torch, torchvision, av, cv2, tqdm, numpy, ultralytics, open_clip, transformers, bjontegaard, matplotlib, pytest, ray'
if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && python -c "$_probe" >/dev/null 2>&1; then
    PY="$(command -v python)"
else
    VENV="$ROOT/.venv"
    stamp="$VENV/.requirements.sha256"
    want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "setting up $VENV from requirements.txt (first run only; a few minutes)..." >&2
        python3 -m venv "$VENV" || { echo "error: could not create $VENV (is python3-venv installed?)" >&2; exit 1; }
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
        torch_first "$VENV/bin/python"
        "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" >&2 \
            || { echo "error: pip install -r requirements.txt failed (see above)" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
    PY="$VENV/bin/python"
fi
export PY
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Ultralytics: keep its settings file inside the repo.
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$ROOT/.cache/ultralytics}"
