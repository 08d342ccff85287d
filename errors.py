"""How every CLI talks to its user when something is wrong: one line, never a traceback.

``UserError`` is a problem with the user's input (a file, a flag); ``warn`` prints one
``WARNING:`` line; ``run_cli`` wraps a CLI's ``run(args)`` so that user errors, OS errors (full
disk, read-only folder, a file where a folder should be) and Ctrl-C/SIGTERM end with one line
and a conventional exit code (2, 2, 130/143).
"""
from __future__ import annotations

import errno
import signal
import sys


class UserError(Exception):
    """A problem with the user's input, reported as one line (no traceback) by every CLI."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout` and process managers send), handled like Ctrl-C: clean up, exit."""


def warn(msg: str) -> None:
    """The one way to warn: a single 'WARNING: ...' line on stderr."""
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _on_sigterm(signum, frame):
    raise Terminated()


def describe_os_error(e: OSError) -> str:
    """An OSError as one line that names the path and says what to do."""
    where = e.filename or "output"
    fixes = {errno.ENOSPC: "the disk is full; free space or choose another --output_dir",
             errno.EACCES: "permission denied; choose a writable --output_dir",
             errno.EROFS: "read-only file system; choose a writable --output_dir",
             errno.EEXIST: "a file is in the way where a folder is needed; choose another --output_dir",
             errno.ENOTDIR: "a file is in the way where a folder is needed; choose another --output_dir"}
    return f"{where}: {fixes.get(e.errno, e.strerror or type(e).__name__)}"


def run_cli(run, args, interrupted_message: str = "interrupted") -> int:
    """Call run(args) and turn what can go wrong into one line and an exit code."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        result = run(args)
        return result if isinstance(result, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"terminated: {interrupted_message}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_message}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
