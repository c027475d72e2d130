"""File staging for everything tlc writes: an artifact is built in a temp directory beside its
destination and renamed into place (:func:`atomic_dir`), so a failed or killed build never leaves
half a package, and an existing artifact is replaced only when asked (:func:`refuse_existing`, the
one place that says so)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import EmitError, OutputExistsError, TlcError


def refuse_existing(path: str | os.PathLike, force: bool) -> Path:
    """``path`` as a :class:`~pathlib.Path`; raises :class:`~tlc.errors.OutputExistsError` when it
    exists and ``force`` is False (the CLI's ``--force``, the API's ``force=True``)."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{str(path)!r} already exists; pass force=True (CLI: --force) to replace it")
    return path


OWNER_FILE = ".tlc-owner"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temp(path: Path, max_age_s: float = 24 * 3600) -> list[Path]:
    """Remove the staging directories (``.NAME.*.tmp`` beside ``path``) that earlier builds left
    when they were killed mid-write: those whose owning process (recorded in
    :data:`OWNER_FILE` as ``host pid``) no longer runs on this host, or, without a record, older
    than ``max_age_s``. A live build's directory is never touched. Returns what was removed."""
    removed = []
    for d in Path(path).parent.glob(f".{Path(path).stem}.*.tmp"):
        if not d.is_dir():
            continue
        try:
            host, pid = (d / OWNER_FILE).read_text().split()
            stale = host == socket.gethostname() and not _alive(int(pid))
        except (OSError, ValueError):
            try:
                stale = time.time() - d.stat().st_mtime > max_age_s
            except OSError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def atomic_dir(path: Path, force: bool, write: Callable[[Path], None]) -> Path:
    """Create directory artifact ``path`` by calling ``write(staged)`` on a temp path in the same
    directory, then renaming it into place (an existing ``path`` is replaced only if ``force``, and
    put back if the rename fails). ``write`` raises to abort; nothing is left behind. Staging
    directories of earlier builds that were killed mid-write are removed first
    (:func:`clean_stale_temp`).

    Raises :class:`OutputExistsError` if ``path`` exists and not ``force``; re-raises
    :class:`TlcError` from ``write``; wraps anything else in :class:`EmitError`.
    """
    path = Path(path)
    refuse_existing(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for d in clean_stale_temp(path):
            print(f"tlc: removed {d.name}, left beside {path.name} by an earlier build that was killed mid-write",
                  file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as e:
        raise EmitError(f"cannot create the output directory for {str(path)!r}: {e}") from e
    old = tmp / "old"
    try:
        staged = tmp / path.name
        write(staged)
        if path.exists():
            os.replace(path, old)
        os.replace(staged, path)
    except TlcError:
        raise
    except Exception as e:
        if old.exists() and not path.exists():  # put the user's previous artifact back
            os.replace(old, path)
        raise EmitError(f"could not write {str(path)!r}: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def atomic_file(path: Path, force: bool, data: bytes) -> Path:
    """Write file ``path`` with ``data`` through a temp file beside it and a rename (an existing
    ``path`` is replaced only if ``force``: :func:`refuse_existing`). Raises
    :class:`OutputExistsError`, or :class:`EmitError` when it cannot be written (nothing is left
    behind)."""
    path = refuse_existing(path, force)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise EmitError(f"could not write {str(path)!r}: {e}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def file_sha256(f: Path, chunk: int = 1 << 22) -> bytes:
    """SHA-256 of a file's bytes, read 4 MiB at a time (a package's weight file can be gigabytes:
    read whole, it was the peak of a 1.1B-parameter LM build, issue 31)."""
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.digest()


def tree_digest(p: Path) -> str:
    """SHA-256 (hex) of a file, or of a directory's files (relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
        h.update(str(f.relative_to(p) if p.is_dir() else "").encode() + b"\0")
        h.update(file_sha256(f))
    return h.hexdigest()


__all__ = ["refuse_existing", "atomic_dir", "atomic_file", "clean_stale_temp", "file_sha256", "tree_digest", "OWNER_FILE"]
