"""Persistent compile cache: a second process builds the same model without tracing it again (issue 18).

Two kinds of entries, each a directory under the cache root (:func:`cache_dir`):

* ``traces/KEY`` — what a :class:`~tlc.api.CompiledModel` needs to run and to be saved: the
  optimized IR graph (:func:`tlc.serialize.save_graph`), the output structure and dtypes, the
  calibration feeds and the build options. A hit skips ``torch.export``, decomposition, lowering
  and the pass pipeline: the whole trace.
* ``plans/KEY`` — the build plan (:class:`tlc.plan.BuildPlan`: the precision-typed graph, the
  placement, ``mixed``'s closed-loop record): a hit skips the precision closed loop.
* ``artifacts/KEY`` — an artifact :meth:`CompiledModel.save` wrote (``.mlpackage``, bundle or
  ``.aimodel``). A hit copies it: no precision closed loop, emission or serialization.

**The key** (:func:`source_key`) is a SHA-256 over, incrementally (never by pickling the model):

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
"""
from __future__ import annotations

import enum
import hashlib
import inspect
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

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


def max_bytes() -> int:
    """The size cap in bytes (``$TLC_CACHE_MAX_BYTES``, default :data:`DEFAULT_MAX_BYTES`)."""
    try:
        return int(os.environ.get("TLC_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        from .errors import InputError

        raise InputError(f"TLC_CACHE_MAX_BYTES must be an integer number of bytes, got "
                         f"{os.environ['TLC_CACHE_MAX_BYTES']!r}") from None


# ------------------------------------------------------------------------------------------ the key


class _Hasher:
    """SHA-256 fed with tagged, length-prefixed parts (so ``("ab", "c")`` and ``("a", "bc")`` differ)."""

    def __init__(self):
        self.h = hashlib.sha256()

    def part(self, tag: str, data: bytes | str | memoryview) -> None:
        b = data.encode() if isinstance(data, str) else data
        self.h.update(f"{tag}:{len(b)}:".encode())
        self.h.update(b)

    def tensor(self, name: str, t) -> None:
        import torch

        if isinstance(t, torch.Tensor):
            t = t.detach()
            if t.is_sparse or t.device.type == "meta":
                self.part(name, f"{t.dtype}{tuple(t.shape)} (no data)")
                return
            c = t.cpu().contiguous()
            self.part(name + ".meta", f"{c.dtype}{tuple(c.shape)}")
            self.part(name, c.reshape(-1).view(torch.uint8).numpy().data if c.numel() else b"")
        else:
            a = np.ascontiguousarray(t)
            self.part(name + ".meta", f"{a.dtype}{a.shape}")
            self.part(name, a.view(np.uint8).data if a.size else b"")

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def versions() -> dict[str, str]:
    """The versions a cache key depends on: tlc's version and the digest of its sources
    (:func:`tlc_source_digest`), torch, coremltools, coreai-core and transformers when installed."""
    from importlib import metadata

    from . import __version__

    out = {"tlc": __version__, "tlc_sources": tlc_source_digest(), "format": str(FORMAT_VERSION)}
    for dist in ("torch", "coremltools", "coreai-core", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


_PLAIN = (int, float, str, bool, type(None))


def _plain(v) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v))


def _source_file(obj) -> str | None:
    try:
        f = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return f if f and os.path.isfile(f) else None


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_MAX_DEPTH = 6


def _value(h: _Hasher, tag: str, v, files: set[str], seen: set[int], depth: int = 0) -> None:
    """Feed what ``v`` contributes to a model's behaviour: tensors by bytes, modules and
    functions by :func:`_model_part`, ``functools.partial`` by its function and arguments,
    containers element by element, plain values, dtypes and enums by ``repr``; other objects by
    type and (to a bounded depth) their attributes."""
    import functools

    import torch

    if isinstance(v, (torch.Tensor, np.ndarray)):
        h.tensor(tag, v)
    elif _plain(v) and not isinstance(v, (list, tuple)):
        h.part(tag, repr(v))
    elif isinstance(v, (torch.dtype, torch.device, torch.Size)) or isinstance(v, enum.Enum):
        h.part(tag, repr(v))
    elif isinstance(v, (list, tuple, set, frozenset)):
        h.part(tag, f"{type(v).__name__}[{len(v)}]")
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        for k, x in enumerate(items):
            _value(h, f"{tag}[{k}]", x, files, seen, depth + 1)
    elif isinstance(v, dict):
        h.part(tag, f"dict[{len(v)}]")
        for k in sorted(v, key=repr):
            _value(h, f"{tag}[{k!r}]", v[k], files, seen, depth + 1)
    elif isinstance(v, functools.partial):
        h.part(tag, "partial")
        _model_part(h, v.func, files, seen, depth + 1)
        _value(h, f"{tag}.args", v.args, files, seen, depth + 1)
        _value(h, f"{tag}.keywords", v.keywords, files, seen, depth + 1)
    elif isinstance(v, torch.nn.Module) or inspect.isfunction(v) or inspect.ismethod(v) or inspect.isbuiltin(v):
        _model_part(h, v, files, seen, depth + 1)
    elif isinstance(v, type):
        h.part(tag, f"class {v.__qualname__}@{_source_file(v)}")
    else:
        h.part(tag, f"{type(v).__qualname__}@{_source_file(type(v))}")
        if id(v) in seen or depth >= _MAX_DEPTH:
            return
        seen.add(id(v))
        if hasattr(v, "to_json_string"):  # a Hugging Face config
            h.part(tag + ".config", v.to_json_string(use_diff=False))
            return
        attrs = getattr(v, "__dict__", None)
        if attrs is not None:
            if callable(v):  # a callable object: its __call__ is code
                _model_part(h, type(v).__call__, files, seen, depth + 1)
            for k in sorted(attrs):
                _value(h, f"{tag}.{k}", attrs[k], files, seen, depth + 1)
        else:
            r = repr(v)
            h.part(tag + ".repr", _ADDRESS.sub("", r))


def _model_part(h: _Hasher, obj, files: set[str], seen: set[int], depth: int = 0) -> None:
    """Feed a module (its tree: classes and their source files, every parameter and buffer, the
    other attributes of every submodule, hooks) or a function (source file, bytecode, defaults,
    closure, the globals it reads)."""
    import torch

    if id(obj) in seen or depth > 2 * _MAX_DEPTH:
        return
    seen.add(id(obj))
    obj = getattr(obj, "__tlc_function__", obj)  # a @tlc.compile wrapper: what it wraps
    if isinstance(obj, torch.nn.Module):
        for name, m in obj.named_modules():
            cls = type(m)
            f = _source_file(cls)
            if f:
                files.add(f)
            h.part("module", f"{name}={cls.__qualname__}@{f}")  # not __module__: tlc build imports files under random names
            for k, v in sorted(vars(m).items()):
                if k in ("_parameters", "_buffers", "_modules"):
                    continue  # the parameters and buffers are hashed by name below, submodules by named_modules
                if k.startswith("_") and not k.endswith("hooks"):
                    continue  # torch's bookkeeping (_non_persistent_buffers_set, ...); hooks change results
                _value(h, f"{name}.{k}", v, files, seen, depth + 1)
        for k, t in list(obj.named_parameters(remove_duplicate=False)) + list(obj.named_buffers(remove_duplicate=False)):
            h.tensor(k, t)  # named_buffers: persistent or not (state_dict leaves non-persistent ones out)
        return
    if inspect.ismethod(obj):
        _model_part(h, obj.__self__, files, seen, depth + 1)
        obj = obj.__func__
    fn = inspect.unwrap(obj) if callable(obj) else obj
    code = getattr(fn, "__code__", None)
    if code is None:
        _value(h, "object", obj, files, seen, depth + 1)
        return
    f = _source_file(fn)
    if f:
        files.add(f)
    h.part("function", f"{fn.__qualname__}@{f}")
    h.part("code", code.co_code)
    _value(h, "consts", [c for c in code.co_consts if not inspect.iscode(c)], files, seen, depth + 1)
    _value(h, "defaults", (fn.__defaults__ or (), fn.__kwdefaults__ or {}), files, seen, depth + 1)
    for k, c in enumerate(fn.__closure__ or ()):
        try:
            cell = c.cell_contents
        except ValueError:  # an empty cell: a name bound later in the enclosing function
            cell = None
        _value(h, f"closure{k}", cell, files, seen, depth + 1)
    glb = getattr(fn, "__globals__", {})
    for n in code.co_names:
        if n in glb and not inspect.ismodule(glb[n]):
            v = glb[n]
            if inspect.isfunction(v) and _source_file(v) != f:
                h.part(f"global.{n}", f"{v.__qualname__}@{_source_file(v)}")  # library code: covered by its version
            else:
                _value(h, f"global.{n}", v, files, seen, depth + 1)


_TLC_SOURCES: str | None = None


def tlc_source_digest() -> str:
    """SHA-256 over tlc's own source files' names, sizes and modification times (once per
    process): a fix to a pass or an emitter in an editable install changes every key, though
    ``tlc.__version__`` does not. A checkout that only touches files misses once, harmlessly."""
    global _TLC_SOURCES
    if _TLC_SOURCES is None:
        import tlc
        import tlc.passes
        import tlc.runtime

        h = hashlib.sha256()
        roots = {Path(m.__file__).parent for m in (tlc, tlc.passes, tlc.runtime)}
        for root in sorted(roots):
            for f in sorted(root.rglob("*.py")):
                st = f.stat()  # size and mtime: any edit changes them (reading ~2 MB of source costs 0.15 s a start)
                h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        _TLC_SOURCES = h.hexdigest()
    return _TLC_SOURCES


def source_key(model, example_inputs, options: dict, *, values: bool = True, calibration: Iterable = (),
               user_key: str | None = None) -> str:
    """The cache key of building ``model`` on ``example_inputs`` with ``options`` (see the module
    docstring): hex SHA-256. ``values``: hash the example and ``calibration`` values too (not
    only their signature); ``user_key`` replaces the model part (weights, code)."""
    import torch
    from torch.utils import _pytree as pytree

    from .api import signature_key
    from .frontend import normalize_inputs

    h = _Hasher()
    h.part("versions", json.dumps(versions(), sort_keys=True))
    h.part("options", json.dumps({k: _opt(v) for k, v in sorted(options.items())}, sort_keys=True))
    args, kwargs = normalize_inputs(example_inputs)
    sig, leaves = signature_key(args, kwargs)
    h.part("signature", repr(sig))
    if values:
        for k, x in enumerate(leaves):
            if isinstance(x, (torch.Tensor, np.ndarray)):
                h.tensor(f"input{k}", x)
        for j, sample in enumerate(calibration):
            for k, x in enumerate(pytree.tree_leaves(sample)):
                if isinstance(x, (torch.Tensor, np.ndarray)):
                    h.tensor(f"calibration{j}.{k}", x)
    if user_key is not None:
        h.part("user_key", str(user_key))
    else:
        files: set[str] = set()
        _model_part(h, model, files, set())
        for f in sorted(files):
            h.part("file", f)
            h.part("file_bytes", Path(f).read_bytes())
    return h.hexdigest()


def _opt(v):
    """A build option as JSON (paths as strings, anything else by ``repr``)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_opt(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _opt(x) for k, x in sorted(v.items())}
    return str(v) if isinstance(v, os.PathLike) else repr(v)


def file_key(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a ``--profile`` file as a build option)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
        """Remove every entry (and staging leftovers); returns how many entries there were."""
        n = len(self.entries())
        for kind in KINDS + ("tmp",):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        return n


# ------------------------------------------------------------------------- CompiledModel <-> entry


def _save_graph(g, d: Path, stem: str) -> None:
    from .serialize import save_graph

    save_graph(g, d / f"{stem}.json", d / f"{stem}.safetensors")
    with open(d / f"{stem}.meta.pkl", "wb") as f:
        pickle.dump(dict(g.meta), f)


def _load_graph(d: Path, stem: str):
    from .ir import replace
    from .serialize import load_graph

    with open(d / f"{stem}.meta.pkl", "rb") as f:
        meta = pickle.load(f)
    return replace(load_graph(d / f"{stem}.json"), meta=meta)


_LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError)


def _read(cache: Cache, kind: str, key: str, read):
    """``(read(entry dir), entry meta, seconds)`` for a sound entry ``kind/key``, else None; an
    entry that passes its hashes but does not load (a format from another tlc) is removed."""
    from .errors import TlcError

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


def store_trace(cache: Cache, key: str, cm, build_kwargs: dict) -> Path | None:
    """Write the trace entry of ``cm`` (a fresh :class:`~tlc.api.CompiledModel`) under ``key``;
    ``build_kwargs``: the keyword arguments its :class:`CompiledModel` was made with, except the
    graph and the calibration feeds (stored as files)."""

    def write(d: Path):
        _save_graph(cm.graph, d, "graph")
        np.savez(d / "calibration.npz", **{f"{k}/{n}": np.asarray(v) for k, f in enumerate(cm.calibration)
                                           for n, v in f.items()})
        with open(d / "python.pkl", "wb") as f:  # the output pytree spec and torch dtypes: small, tlc-written
            pickle.dump({k: build_kwargs[k] for k in ("out_spec", "out_torch_dtypes", "cost")}, f)

    meta = {k: v for k, v in build_kwargs.items() if k not in ("out_spec", "out_torch_dtypes", "cost", "timings")}
    return cache.put("traces", key, write, meta)


def load_trace(cache: Cache, key: str, **overrides):
    """The :class:`~tlc.api.CompiledModel` of trace entry ``key`` (``overrides``: constructor
    arguments that come from this call, such as ``progress``), or None (a miss, or an entry that
    failed its integrity check or no longer loads)."""
    from .api import CompiledModel

    def read(d: Path):
        g = _load_graph(d, "graph")
        with open(d / "python.pkl", "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree LeafSpec deprecation, from unpickling
            py = pickle.load(f)
        with np.load(d / "calibration.npz") as z:
            feeds: dict[int, dict] = {}
            for name in z.files:
                k, n = name.split("/", 1)
                feeds.setdefault(int(k), {})[n] = z[name]
        return g, py, [feeds[k] for k in sorted(feeds)]

    got = _read(cache, "traces", key, read)
    if got is None:
        return None
    (g, py, calibration), meta, secs = got
    return CompiledModel(g, calibration=calibration, **py, **{**meta, **overrides, "timings": {"cache_load": secs}})


def store_plan(cache: Cache, key: str, plan) -> Path | None:
    """Write ``plan`` (:class:`tlc.plan.BuildPlan`) as entry ``plans/key`` (the emitted MLModel
    is not kept: an artifact entry holds what was written)."""

    def write(d: Path):
        _save_graph(plan.emit_graph, d, "emit")
        with open(d / "plan.pkl", "wb") as f:
            pickle.dump({"placement": plan.placement, "precision_check": plan.precision_check,
                         "timings": dict(plan.timings)}, f)

    return cache.put("plans", key, write)


def load_plan(cache: Cache, key: str, options):
    """The :class:`tlc.plan.BuildPlan` of entry ``plans/key`` for ``options``, or None."""
    from .plan import BuildPlan

    def read(d: Path):
        with open(d / "plan.pkl", "rb") as f:
            return _load_graph(d, "emit"), pickle.load(f)

    got = _read(cache, "plans", key, read)
    if got is None:
        return None
    (eg, p), _, secs = got
    return BuildPlan(options, eg, p["placement"], p["precision_check"], None, None, {"plan_cache_load": secs})


def derived_key(key: str, what: str) -> str:
    """A key for the same trace under other build options (``CompiledModel.with_options``)."""
    h = _Hasher()
    h.part("base", key)
    h.part("options", what)
    return h.hexdigest()


def calibration_key(key: str, feed: dict) -> str:
    """``key`` with one more calibration sample (``{input: array}``) for the plan and artifacts."""
    h = _Hasher()
    h.part("base", key)
    for n in sorted(feed):
        h.tensor(f"calibration.{n}", np.asarray(feed[n]))
    return h.hexdigest()


def artifact_key(trace_key: str, path: Path, fmt: str) -> str:
    """The key of the artifact a cached model writes at ``path`` in format ``fmt`` (the file name
    matters: a bundle's segments record it; so does ``$SOURCE_DATE_EPOCH``)."""
    h = _Hasher()
    h.part("trace", trace_key)
    h.part("name", path.name)
    h.part("format", fmt)
    h.part("source_date_epoch", os.environ.get("SOURCE_DATE_EPOCH", ""))  # it sets the dates the files hold
    return h.hexdigest()


def copy_artifact(src: Path, dest: Path, force: bool) -> Path:
    """Copy a cached artifact directory to ``dest`` atomically (:func:`tlc.artifact.atomic_dir`)."""
    from .artifact import atomic_dir

    return atomic_dir(dest, force, lambda staged: shutil.copytree(src, staged))


__all__ = ["Cache", "cache_dir", "enabled", "source_key", "store_trace", "load_trace", "store_plan", "load_plan",
           "artifact_key", "copy_artifact", "versions"]
