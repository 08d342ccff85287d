#!/usr/bin/env bash
# The test command: sets up the environment if needed, then runs pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source ./setup_env.sh
exec "$PY" -m pytest -q tests "$@"
