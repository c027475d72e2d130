"""Stage progress on stderr for long work: builds, verification, benchmarks (issue 18).

On a terminal, :func:`stage` shows a ``rich`` spinner with the stage's name while it runs and a
``done`` line with its seconds after; :func:`note` prints one line (the closed loop's rounds, the
functions of a multifunction build, compression every 10%). Nothing is printed when stderr is not
a terminal (CI logs, pipes, notebooks), with ``--quiet`` (:func:`set_quiet`) or with
``$TLC_QUIET=1``; ``$TLC_PROGRESS=1`` prints plain lines even without a terminal.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

_QUIET = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) all progress output of this process (the CLI's ``--quiet``)."""
    global _QUIET
    _QUIET = quiet


def _env(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def enabled(stream=None) -> bool:
    """Whether progress goes to ``stream`` (default ``sys.stderr``): not quiet, and a terminal or
    ``$TLC_PROGRESS=1``."""
    if _QUIET or _env("TLC_QUIET"):
        return False
    s = sys.stderr if stream is None else stream
    return _env("TLC_PROGRESS") or bool(getattr(s, "isatty", lambda: False)())


def note(line: str, stream=None) -> None:
    """Print ``  ... line`` to ``stream`` (default stderr) when :func:`enabled`."""
    s = sys.stderr if stream is None else stream
    if enabled(s):
        print(f"  ... {line}", file=s, flush=True)


_LIVE: list = []  # the terminal spinner of the outermost running stage, and the stage names under it


@contextlib.contextmanager
def stage(name: str):
    """Show ``name`` while the ``with`` block runs (a spinner on a terminal), then ``... NAME:
    S s``; silent when not :func:`enabled`. Stages nest: an inner stage takes over the one
    spinner's text and gives it back (one line, never two spinners fighting over it); an
    exception passes through after the spinner is cleared."""
    if not enabled():
        yield
        return
    t0 = time.perf_counter()
    if not sys.stderr.isatty():  # $TLC_PROGRESS=1 without a terminal: plain lines
        yield
        print(f"  ... {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        return
    if _LIVE:
        status, names = _LIVE[0]
        names.append(name)
        status.update(f"[bold]{name}[/bold] ...")
        try:
            yield
        finally:
            names.pop()
            status.update(f"[bold]{names[-1]}[/bold] ...")
        status.console.print(f"  [dim]... {name}: {time.perf_counter() - t0:.1f} s[/dim]", highlight=False)
        return
    from rich.console import Console

    con = Console(stderr=True)
    with con.status(f"[bold]{name}[/bold] ...") as status:
        _LIVE.append((status, [name]))
        try:
            yield
        finally:
            _LIVE.clear()
    con.print(f"  [dim]... {name}: {time.perf_counter() - t0:.1f} s[/dim]", highlight=False)


__all__ = ["enabled", "note", "set_quiet", "stage"]
