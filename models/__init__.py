"""Keras model builders, chosen by name in the config (``model.builder``), or a user's own module
(``model.module``: ``path/to/my_model.py`` or ``package.module:function``).

A builder is ``build(inputs, spec, **params)``: ``inputs`` is a dict of the processed feature tensors
(``numeric``, ``cat__<column>``, ``text__<column>``, ``tokens__<column>``, ``image__<column>``; see
:class:`pipeline.preprocess.ModelSpec`, which is ``spec``)
and it returns the output tensor: class probabilities (softmax, ``spec.n_outputs`` wide, float32) for
classification, one standardized value for regression. ``models.layers`` has the helpers to encode the inputs and
make the head. Its keyword parameters are what ``model.params`` may set; they are checked when the config loads.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Mapping

from models import image, linear, mlp, tabular, text

BUILDERS: dict[str, Callable] = {"tabular": tabular.build, "mlp": mlp.build, "linear": linear.build,
                                 "cnn": image.build_cnn, "transfer": image.build_transfer,
                                 "text_cnn": text.build_cnn, "text_transformer": text.build_transformer}
DEFAULT_BUILDER = "tabular"


def get_builder(name: str) -> Callable:
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model builder {name!r}; known: {', '.join(sorted(BUILDERS))}") from None


_FILE_MODULES: dict[tuple[str, int], object] = {}


def _import_file(ref: str, path: Path):
    """The module in ``path``, imported once per version of the file: every task loads the run's config, and
    each load checks the builder, so without this the user's file would run again each time (and its classes be
    new ones)."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _FILE_MODULES:
        name = f"pipeline_user_model_{path.stem}_{abs(hash(key))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(f"model.module {ref!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        _FILE_MODULES[key] = module
    return _FILE_MODULES[key]


def load_module_builder(ref: str, base: Path | None = None) -> Callable:
    """The builder a ``model.module`` reference names: a ``.py`` file (its ``build``; relative paths against
    ``base``, then the working directory) or ``package.module[:function]`` (default ``build``)."""
    if ".py" in ref:
        path_part, sep, func = ref.partition(".py:")
        path = Path(path_part + ".py" if sep else ref).expanduser()
        candidates = [path] if path.is_absolute() else [p for p in ((base / path) if base else None, Path.cwd() / path) if p]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ValueError(f"model.module {ref!r}: file not found (looked in {', '.join(map(str, candidates))})")
        module = _import_file(ref, found.resolve())
        func = func or "build"
    else:
        mod_name, _, func = ref.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"model.module {ref!r}: cannot import {mod_name!r}: {exc}") from exc
        func = func or "build"
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"model.module {ref!r}: no function {func!r} in it")
    return fn


def check_params(fn: Callable, params: Mapping, label: str) -> None:
    """Every key of ``params`` must be a keyword parameter of ``fn`` (after ``inputs, spec``), and ``fn`` must
    take ``(inputs, spec)``; the message names the builder and the parameter."""
    import difflib

    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        raise ValueError(f"model builder {label}: must take (inputs, spec, **params), its signature is {sig}")
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = [p.name for p in list(sig.parameters.values())[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"model.params.{key}: builder {label} has no parameter {key!r} "
                             f"(it takes: {', '.join(known) or 'none'}){hint}")
    if fn in BUILDERS.values():  # a user's module gives its parameters its own meaning
        for key, value in params.items():
            if key in PARAM_CHECKS:
                problem = PARAM_CHECKS[key](value)
                if problem:
                    raise ValueError(f"model.params.{key}: {problem}, got {value!r}")


def _number_in(low: float, high: float | None = None, high_open: bool = False):
    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if value < low:
            return f"must be >= {low}"
        if high is not None and (value >= high if high_open else value > high):
            return f"must be {'<' if high_open else '<='} {high}"
        return None
    return check


def _boolean(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _one_of(values):
    def check(value) -> str | None:
        return None if value in values else f"must be one of {', '.join(map(str, values))}"
    return check


# The built-in builders' regularization, augmentation and transfer parameters, checked when the config loads.
PARAM_CHECKS = {"l1": _number_in(0, 1), "l2": _number_in(0, 1), "dropout": _number_in(0, 1, high_open=True),
                "batch_norm": _boolean, "rotation": _number_in(0, 1, high_open=True),
                "zoom": _number_in(0, 1, high_open=True), "translation": _number_in(0, 1, high_open=True),
                "contrast": _number_in(0, 1, high_open=True), "brightness": _number_in(0, 1, high_open=True),
                "crop": _number_in(0, 0.5, high_open=True), "flip": _one_of(image.FLIPS),
                "architecture": _one_of(tuple(image.ARCHITECTURES)), "freeze_epochs": _number_in(0),
                "fine_tune_learning_rate": _number_in(1e-6, 1)}
