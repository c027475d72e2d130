"""Persistent compile cache: a second process builds the same model without tracing it again (issue 18).

Three kinds of entries, each a directory under the cache root (:func:`cache_dir`):

* ``traces/KEY`` — what a :class:`~tlc.driver.model.CompiledModel` needs to run and to be saved: the
  optimized IR graph (:func:`tlc.serialize.save_graph`), the output structure and dtypes, the
  calibration feeds and the build options. A hit skips ``torch.export``, decomposition, lowering
  and the pass pipeline: the whole trace.
* ``plans/KEY`` — the build plan (:class:`tlc.driver.plan.BuildPlan`: the precision-typed graph, the
  placement, ``mixed``'s closed-loop record): a hit skips the precision closed loop.
* ``artifacts/KEY`` — an artifact :meth:`CompiledModel.save` wrote (``.mlpackage``, bundle or
  ``.aimodel``). A hit copies it: no precision closed loop, emission or serialization.

**The key** (:func:`tlc.driver.cache_key.source_key`) is a SHA-256 over, incrementally (never by pickling the model):

* the versions of tlc, torch, coremltools and coreai-core, and a format version;
* the build options;
* the input signature: tree structure, shapes and dtypes, and, for ``tlc.build``/``tlc build``,
  the example and calibration values (``mixed`` calibrates on them);
* the model: every parameter and buffer (name, dtype, shape, bytes), each module's plain
  attributes (numbers, strings, flags: ``training``, ``eps``, ...), a Hugging Face ``config``,
  and the source files that define the model's module classes or the function (with its
  closure and the tensors/modules it reads from globals). ``cache_key=`` replaces this model
  part with the user's own key.

What the model part does not see: code in *other* files that ``forward`` calls (a helper module
of your own). Editing only such a file keeps the key; pass ``cache=False``, or a new
``cache_key``, after such an edit. Library code is covered by the versions.

**Integrity.** Each entry's ``entry.json`` lists the SHA-256 of every file in it; a load checks
them all, and an entry that fails (truncated, edited, half-deleted) is removed and rebuilt, never
trusted. Entries are written to a temp directory and renamed into place.

**Trust.** Entries hold small pickles (the output pytree spec, the placement, the closed-loop
record), so the cache directory is trusted like the user's own code: do not share a writable
``$TLC_CACHE_DIR`` between users. The hashes catch damage, not an attacker who rewrites them.

**Size.** ``$TLC_CACHE_MAX_BYTES`` (default 10 GiB) caps the root; after each write the
least-recently-used entries (a hit touches ``last_used``) are evicted until it fits. ``tlc cache
info|clear`` reports and empties it. ``$TLC_NO_CACHE=1`` turns the cache off everywhere.

This module is the storage; the key is :mod:`tlc.driver.cache_key`, and each entry kind is read and
written next to what it rebuilds (:func:`tlc.driver.model.store_trace` / ``load_trace``,
:meth:`tlc.driver.plan.BuildPlan.store` / ``load``).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tlc.errors import InputError, TlcError
from tlc.ir import Graph, replace
from tlc.serialize import load_graph, save_graph
from tlc.util.files import atomic_dir

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 10 * 2**30
KINDS = ("traces", "plans", "artifacts")


def cache_dir() -> Path:
    """The cache root: ``$TLC_CACHE_DIR``, else the platform cache directory
    (``~/Library/Caches/tlc`` on macOS, ``$XDG_CACHE_HOME/tlc`` or ``~/.cache/tlc`` elsewhere)."""
    env = os.environ.get("TLC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tlc"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlc"


def enabled(requested: bool | None = True) -> bool:
    """Whether to use the cache: ``requested`` unless ``$TLC_NO_CACHE`` is set (to anything but 0)."""
    return bool(requested) and os.environ.get("TLC_NO_CACHE", "0") in ("", "0")


#: the folder under the cache root that holds torch Inductor's own on-disk caches (:func:`use_for_inductor`)
INDUCTOR = "inductor"


def use_for_inductor() -> None:
    """Point torch Inductor's on-disk caches (its FX graph and AOT autograd caches, under
    ``$TORCHINDUCTOR_CACHE_DIR``) into tlc's cache root, so a second process compiling the same
    graph for tlc's torch executor (``capture="compile+cuda_graph"``, the CUDA default) starts warm.
    Leaves a ``$TORCHINDUCTOR_CACHE_DIR`` the user set alone, and does nothing when the cache is off
    (:func:`enabled`). ``tlc cache clear`` empties it too."""
    if enabled() and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / INDUCTOR)


def max_bytes() -> int:
    """The size cap in bytes (``$TLC_CACHE_MAX_BYTES``, default :data:`DEFAULT_MAX_BYTES`)."""
    try:
        return int(os.environ.get("TLC_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        raise InputError(f"TLC_CACHE_MAX_BYTES must be an integer number of bytes, got "
                         f"{os.environ['TLC_CACHE_MAX_BYTES']!r}") from None


# ---------------------------------------------------------------------------------------- storage


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("entry.json", "last_used"))


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Cache:
    """The cache at ``root`` (default :func:`cache_dir`). :meth:`get` and :meth:`put` read and
    write entries of a kind in :data:`KINDS`; :meth:`info` and :meth:`clear` serve ``tlc cache``.
    ``hits`` / ``misses`` / ``rebuilt`` count this object's lookups (``rebuilt``: entries that
    failed their integrity check and were removed)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.hits = self.misses = self.rebuilt = 0
        self.max_bytes = max_bytes()  # a bad $TLC_CACHE_MAX_BYTES fails here, before any work

    def _entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def get(self, kind: str, key: str) -> tuple[Path, dict] | None:
        """``(entry directory, its meta dict)`` if a sound entry exists, else None. An entry that
        fails its integrity check is removed (and counted in ``rebuilt``)."""
        d = self._entry(kind, key)
        try:
            doc = json.loads((d / "entry.json").read_text())
            ok = (doc.get("format") == FORMAT_VERSION and doc.get("key") == key
                  and sorted(doc["files"]) == [str(p.relative_to(d)) for p in _files(d)]
                  and all(_digest(d / rel) == sha for rel, sha in doc["files"].items()))
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            shutil.rmtree(d, ignore_errors=True)
            self.rebuilt += 1
            self.misses += 1
            print(f"tlc: cache entry {kind}/{key[:12]} failed its integrity check; rebuilding it", file=sys.stderr)
            return None
        try:
            (d / "last_used").write_text(f"{time.time():.3f}\n")
        except OSError:  # a read-only cache still serves hits (it just cannot record them for eviction)
            pass
        self.hits += 1
        return d, doc.get("meta", {})

    def put(self, kind: str, key: str, write, meta: dict | None = None) -> Path | None:
        """Create entry ``kind/key`` by calling ``write(staging_dir)``, record every file's
        SHA-256, rename it into place and evict down to :func:`max_bytes`. Returns the entry
        directory, or None when the cache cannot be written (a warning, never an error: a build
        does not fail because its cache is full or read-only)."""
        d = self._entry(kind, key)
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            for old in (self.root / "tmp").iterdir():  # left by a process killed mid-write a day ago or more
                if time.time() - old.stat().st_mtime > 24 * 3600:
                    shutil.rmtree(old, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.root / "tmp"))
        except OSError as e:
            print(f"tlc: cannot write the compile cache at {self.root} ({e}); continuing without it", file=sys.stderr)
            return None
        try:
            stage = tmp / "entry"
            stage.mkdir()
            write(stage)
            doc = {"format": FORMAT_VERSION, "key": key, "kind": kind, "created": time.time(),
                   "files": {str(p.relative_to(stage)): _digest(p) for p in _files(stage)}, "meta": meta or {}}
            (stage / "entry.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            (stage / "last_used").write_text(f"{time.time():.3f}\n")
            d.parent.mkdir(parents=True, exist_ok=True)
            if not d.exists():  # keys name content: an entry another process just wrote is as good as ours
                os.replace(stage, d)
        except Exception as e:  # noqa: BLE001 - e.g. an output structure that does not pickle: build on, uncached
            print(f"tlc: not caching this {kind[:-1]} ({type(e).__name__}: {e}); the build goes on without it",
                  file=sys.stderr)
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict()
        return d

    def entries(self) -> list[tuple[str, Path, int, float]]:
        """``(kind, directory, bytes, last used)`` of every entry."""
        out = []
        for kind in KINDS:
            for d in sorted((self.root / kind).glob("*/*")):
                if d.is_dir():
                    try:
                        used = float((d / "last_used").read_text())
                    except (OSError, ValueError):
                        used = 0.0
                    out.append((kind, d, _size(d), used))
        return out

    def evict(self, limit: int | None = None) -> int:
        """Remove least-recently-used entries until the cache holds at most ``limit`` bytes
        (default :func:`max_bytes`); returns how many were removed."""
        limit = self.max_bytes if limit is None else limit
        ents = sorted(self.entries(), key=lambda e: e[3])
        total = sum(e[2] for e in ents)
        n = 0
        for _, d, size, _ in ents:
            if total <= limit:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size
            n += 1
        return n

    def info(self) -> dict:
        """``{"root", "entries": {kind: count}, "bytes", "max_bytes"}``."""
        ents = self.entries()
        return {"root": str(self.root), "entries": {k: sum(1 for e in ents if e[0] == k) for k in KINDS},
                "bytes": sum(e[2] for e in ents), "max_bytes": self.max_bytes}

    def clear(self) -> int:
        """Remove every entry (and staging leftovers, and Inductor's caches: :func:`use_for_inductor`);
        returns how many entries there were."""
        n = len(self.entries())
        for kind in KINDS + ("tmp", INDUCTOR):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        return n


# ------------------------------------------------------------------------------- entry helpers


def save_graph_entry(g: Graph, d: Path, stem: str) -> None:
    """Write graph ``g`` into entry directory ``d`` as ``STEM.json`` + ``.safetensors`` (:mod:`tlc.serialize`)
    and its ``meta`` as ``STEM.meta.pkl``."""
    save_graph(g, d / f"{stem}.json", d / f"{stem}.safetensors")
    with open(d / f"{stem}.meta.pkl", "wb") as f:
        pickle.dump(dict(g.meta), f)


def load_graph_entry(d: Path, stem: str) -> Graph:
    """The graph :func:`save_graph_entry` wrote into ``d``."""
    with open(d / f"{stem}.meta.pkl", "rb") as f:
        meta = pickle.load(f)
    return replace(load_graph(d / f"{stem}.json"), meta=meta)


_LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError)


def read_entry(cache: Cache, kind: str, key: str, read):
    """``(read(entry dir), entry meta, seconds)`` for a sound entry ``kind/key``, else None; an
    entry that passes its hashes but does not load (a format from another tlc) is removed."""
    got = cache.get(kind, key)
    if got is None:
        return None
    d, meta = got
    t0 = time.perf_counter()
    try:
        out = read(d)
    except (TlcError,) + _LOAD_ERRORS as e:
        print(f"tlc: cache entry {kind}/{key[:12]} does not load ({type(e).__name__}: {e}); rebuilding it",
              file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
        cache.rebuilt += 1
        return None
    return out, meta, time.perf_counter() - t0


def copy_artifact(src: Path, dest: Path, force: bool) -> Path:
    """Copy a cached artifact directory to ``dest`` atomically (:func:`tlc.util.files.atomic_dir`)."""
    return atomic_dir(dest, force, lambda staged: shutil.copytree(src, staged))


__all__ = ["Cache", "cache_dir", "enabled", "max_bytes", "use_for_inductor", "save_graph_entry", "load_graph_entry", "read_entry",
           "copy_artifact", "KINDS", "FORMAT_VERSION"]
