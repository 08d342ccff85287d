"""setup_env.sh's torch_first: where no GPU is visible a new venv gets PyTorch's CPU build, and an
index that cannot be reached costs one line, not minutes of pip retries. Run against a stand-in
python that records what it is asked to do (no install happens)."""
import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
    *"import torch, torchvision"*) exit "${{HAS_TORCH:-1}}" ;;
    *urllib*) exec "{real}" "$@" ;;
    *) exit 0 ;;
esac
"""


@pytest.fixture
def index_server(tmp_path):
    """A reachable package index with a torch/ page."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _has_every_package() -> bool:
    """Whether setup_env.sh will take this environment as it is (else sourcing it would build .venv)."""
    probe = (REPO / "setup_env.sh").read_text().split("_probe='import ", 1)[1].split("'", 1)[0]
    return all(importlib.util.find_spec(name.strip()) for name in probe.split(","))


@pytest.mark.skipif(not _has_every_package(), reason="this environment lacks requirements.txt's packages")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_torch_first_takes_the_cpu_index_only_when_it_answers(tmp_path, index_server):
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(log=log, real=sys.executable))
    fake.chmod(0o755)
    cases = {  # name: environment before torch_first (each names its index: a GPU changes only the default)
        "reachable": f"TORCH_INDEX_URL={index_server}",
        "unreachable": "TORCH_INDEX_URL=http://127.0.0.1:9",
        "off": "TORCH_INDEX_URL=",
        "installed": f"TORCH_INDEX_URL={index_server} HAS_TORCH=0",
    }
    # the active environment is this one, so sourcing setup_env.sh creates no venv
    script = "source ./setup_env.sh >/dev/null\n" + "".join(
        f"echo '== {name}' >> {log}; echo '== {name}' >&2; {env} torch_first {fake}\n" for name, env in cases.items())
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("TORCH_INDEX_URL", None)
    res = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr

    def section(text, name):
        return text.split(f"== {name}\n")[1].split("==")[0]
    calls, said = log.read_text(), res.stderr
    assert f"-m pip install -q torch torchvision --index-url {index_server}" in section(calls, "reachable")
    assert "pip" not in section(calls, "unreachable")
    assert "http://127.0.0.1:9 cannot be reached" in section(said, "unreachable")
    assert section(calls, "off") == "" and section(said, "off") == ""
    assert "pip" not in section(calls, "installed") and "urllib" not in section(calls, "installed")
