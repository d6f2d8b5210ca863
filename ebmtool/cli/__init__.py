"""ebmtool's command line: a thin Typer app. Each command parses its options, calls one function of
:mod:`ebmtool.stages` and prints the result (a rich table, or one JSON object with --json).

Every user mistake is one line on stderr and exit status 2 (divergence: 3). Langevin: one sampler,
z <- z + (s^2/2) grad log pi(z) + s * eps; --step-size is read in the chain's convention (lebm: that s;
xiao-han: z + (s/2) grad + sqrt(s) eps, the same sampler at sqrt(s)).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Optional

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException as _ClickException
    from typer._click.exceptions import UsageError as _UsageError
    from typer.exceptions import Abort as _Abort
except ImportError:  # older typer depends on click
    from click.exceptions import Abort as _Abort
    from click.exceptions import ClickException as _ClickException
    from click.exceptions import UsageError as _UsageError

from ebmtool.cli import train  # noqa: F401, I001  (registers pretrain-generator and fit-prior first)
from ebmtool.cli import commands  # noqa: F401  (registers the other commands)
from ebmtool.cli.app import app
from ebmtool.errors import UserError

# ------------------------------------------------------------------------------------------------
# commands that share their work across torchrun ranks; any other command runs on rank 0 alone
PARALLEL_COMMANDS = {"pretrain-generator", "fit-prior", "sample", "reconstruct", "anomaly", "fid"}


def _say(msg: str, code: int) -> None:
    """One line on stderr. Under torchrun rank 0 speaks for all (every rank ran the same checks on the same
    inputs, and training agrees on divergence and interruption across ranks); other ranks speak only when they
    lost contact with a peer, prefixed with their rank."""
    from ebmtool.distributed import world

    w = world()
    if w.is_main:
        print(f"ebmtool: {msg}", file=sys.stderr)
    elif code == 1:  # a lost peer: each rank says what it saw
        print(f"ebmtool[rank {w.rank}]: {msg}", file=sys.stderr)


# what a print to a full file (> /dev/full), a closed pipe (| head) or a failing device raises
_STDOUT_ERRORS = {errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class _WatchedStdout:
    """Standard output as it was, remembering the error of a write or flush that failed, so that ``main`` tells a
    full stdout from any other OSError."""

    def __init__(self, stream):
        self.stream, self.failed = stream, None

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError as e:
            self.failed = e
            raise

    def flush(self):
        try:
            return self.stream.flush()
        except OSError as e:
            self.failed = e
            raise

    def __getattr__(self, name):  # fileno, isatty, encoding, ... of the stream itself
        return getattr(self.stream, name)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit does not fail a second time (with a
    traceback-like 'Exception ignored' message) on what the failed print left in the buffer."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's StringIO)
        return
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def hoist_threads(args: list[str]) -> list[str]:
    """``--threads N`` is an option of ``ebmtool`` itself; given after the command (``ebmtool inspect --threads 1
    F``) it is moved before it, so it is honoured wherever the user typed it."""
    name = _command_name(args)
    if name is None:
        return args
    head, tail = args[: args.index(name)], args[args.index(name):]
    out, moved, i = [], [], 0
    while i < len(tail):
        a = tail[i]
        if a == "--threads":
            if i + 1 == len(tail):
                raise UserError("--threads needs a value: a whole number or auto")
            moved += tail[i: i + 2]
            i += 2
            continue
        if a.startswith("--threads="):
            moved.append(a)
        else:
            out.append(a)
        i += 1
    return head + moved + out


def _command_name(args: list[str]) -> Optional[str]:
    """The subcommand in argv (skipping the global --threads N)."""
    it = iter(args)
    for a in it:
        if a == "--threads":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def _tolerant_output() -> None:
    """Whatever the terminal's encoding (``PYTHONIOENCODING=ascii``, a C locale), a character it cannot show is
    written as a backslash escape, never a UnicodeEncodeError (a non-ASCII file name in a result or a message)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change now (closed, or already written through)
                pass


def check_arguments(args: list[str]) -> None:
    """Every argument must be valid UTF-8: a file name that is not would be written, then be unreadable by any
    command (artifacts record their parents' names as JSON text)."""
    for a in args:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates (PEP 383)
            shown = a.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UserError(f"argument {shown!r} is not valid UTF-8 (file names must be UTF-8 text)") from None


def main(argv: Optional[list[str]] = None) -> None:
    from ebmtool import distributed

    _tolerant_output()
    args = sys.argv[1:] if argv is None else list(argv)
    ok = False
    watched = sys.stdout = _WatchedStdout(sys.stdout)
    try:
        check_arguments(args)
        args = hoist_threads(args)
        if distributed.launched_by_torchrun():
            command = _command_name(args)
            if command in PARALLEL_COMMANDS:
                distributed.init_from_env()
            elif os.environ.get("RANK", "0") != "0":
                return  # nothing to share: rank 0 runs it alone
        rv = app(args=args, prog_name="ebmtool", standalone_mode=False)
        sys.stdout.flush()  # a full or closed stdout fails here, inside the try, not at exit
        ok = True
    except OSError as e:
        if watched.failed is None or e.errno not in _STDOUT_ERRORS:  # files report their own (files.atomic_write)
            raise
        _say(f"error: cannot write to standard output ({e.strerror or e})", 2)
        sys.stdout = watched.stream
        _silence_stdout()
        sys.exit(2)
    except UserError as e:
        _say(f"error: {e}", e.exit_code)
        if e.exit_code == 2:
            distributed.fail_together()
        sys.exit(e.exit_code)
    except _ClickException as e:
        msg = " ".join(e.format_message().split())
        code = 2 if isinstance(e, _UsageError) else getattr(e, "exit_code", 1)
        _say(f"error: {msg}", code)
        distributed.fail_together()
        sys.exit(code)
    except (_Abort, KeyboardInterrupt):
        _say("interrupted", 130)
        sys.exit(130)
    except RuntimeError as e:
        lost = distributed.lost_peer(e)
        if lost is None:
            raise
        _say(f"error: {lost}", 1)
        sys.exit(1)
    finally:
        if sys.stdout is watched:
            sys.stdout = watched.stream
        try:
            distributed.finish(ok)
        except UserError as e:  # a peer died after this rank's work was done
            _say(f"error: {e}", 1)
            sys.exit(1)
    if isinstance(rv, int) and rv != 0:
        sys.exit(rv)
