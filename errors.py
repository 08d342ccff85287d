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


def describe_os_error(e: OSError, where_else: str | None = None) -> str:
    """An OSError as one line that names the path (the error's own, else where_else: the output
    folder being written) and says what to do."""
    where = e.filename or where_else or "output"
    fixes = {errno.ENOSPC: "the disk is full; free space or choose another --output_dir",
             errno.EACCES: "permission denied; choose a writable --output_dir",
             errno.EROFS: "read-only file system; choose a writable --output_dir",
             errno.EEXIST: "a file is in the way where a folder is needed; choose another --output_dir",
             errno.ENOTDIR: "a file is in the way where a folder is needed; choose another --output_dir"}
    return f"{where}: {fixes.get(e.errno, e.strerror or type(e).__name__)}"


def run_cli(run, args, interrupted_message: str = "interrupted") -> int:
    """Call run(args) and turn what can go wrong into one line and an exit code."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    if _main_thread() and signal.getsignal(signal.SIGINT) is _interrupted_at_start_up:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on the run cleans up after itself
    try:
        result = run(args)
        return result if isinstance(result, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e, getattr(args, 'output_dir', None))}", file=sys.stderr)
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


def _interrupted_at_start_up(*_) -> None:
    import os
    print("interrupted: nothing was written", file=sys.stderr, flush=True)
    os._exit(130)


def quiet_interrupts() -> None:
    """For a CLI's start-up, before its heavy imports: Ctrl-C while torch and friends load ends with
    one line and exit code 130, not a traceback, and never as a KeyboardInterrupt raised inside a
    C++ extension's initialisation (that aborts: "terminate called ... pybind11"). Nothing has been
    written yet; run_cli gives Ctrl-C back to Python once the CLI runs."""
    if _main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_at_start_up)
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            _interrupted_at_start_up()
        previous(kind, value, tb)
    sys.excepthook = hook


class no_interrupts:
    """A block Ctrl-C and SIGTERM cannot cut short (saving the checkpoint after a first Ctrl-C): they
    are held and delivered when it ends."""

    def __enter__(self):
        self.pending, self.previous = [], {}
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, lambda s, f: self.pending.append(s))
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.pending and exc[0] is None:
            raise Terminated() if self.pending[-1] == signal.SIGTERM else KeyboardInterrupt()


def exit_now(code: int) -> None:
    """End a CLI whose work is done -- every output written, closed and moved into place -- without
    the interpreter's teardown: collecting the garbage of torch's module graph took ~0.4 s of every
    run. The standard streams are flushed first; nothing else of ours is pending by then."""
    import os
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    os._exit(code if isinstance(code, int) else 1)
