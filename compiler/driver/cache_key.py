"""The compile cache's keys (:mod:`tlc.driver.cache`): :func:`source_key` hashes, incrementally and
never by pickling the model, the versions tlc's output depends on, the build options, the input
signature (and values), and the model: every parameter and buffer, each module's plain attributes,
a Hugging Face ``config``, and the source files that define the model's classes or the function
(with its closure and the globals it reads). What it does not see: code in *other* files that
``forward`` calls (a helper module of your own); pass ``cache=False`` or a new ``cache_key=`` after
editing only such a file. Keys of plans and artifacts derive from a trace's key
(:func:`derived_key`, :func:`calibration_key`, :func:`artifact_key`).
"""
from __future__ import annotations

import enum
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from tlc.frontend import normalize_inputs
from tlc import version as tlc_version  # read when a key is made (tests patch it)

from .cache import FORMAT_VERSION
from .inputs import signature_key, unwrap


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

    out = {"tlc": tlc_version.__version__, "tlc_sources": tlc_source_digest(), "format": str(FORMAT_VERSION)}
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
    obj = unwrap(obj)  # a @tlc.compile wrapper: what it wraps
    if isinstance(obj, torch.export.ExportedProgram):  # its graph and state are the model
        h.part("exported", str(obj.graph_module.code))
        for k, t in sorted({**obj.state_dict, **obj.constants}.items()):
            if isinstance(t, torch.Tensor):
                h.tensor(k, t)
        return
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
        import tlc.passes
        import tlc.runtime

        h = hashlib.sha256()
        package = Path(__file__).resolve().parents[1]  # the tlc package (compiler/), this module's grandparent
        roots = {package} | {Path(m.__file__).parent for m in (tlc.passes, tlc.runtime)}
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


__all__ = ["source_key", "versions", "tlc_source_digest", "file_key", "derived_key", "calibration_key",
           "artifact_key"]
