"""Names that become paths and URLs: the serving model name, checked in one place.

A model name is a directory under the serving base (``serving/<model_name>/<version>/``), the ``name`` of a
``models.config`` entry, a registered model in MLflow and a path segment of TensorFlow Serving's REST API
(``/v1/models/([^/:]+)...``, see docs/serving.md). TensorFlow Serving itself only refuses an empty name; the
rest of the rule is what keeps the name one safe path segment everywhere it goes. Standard library only: the
config, the CLI, the DAGs' first task and ``pipeline.paths`` all call it.
"""
from __future__ import annotations

import re

MODEL_NAME_MAX = 128
# The same pattern is the DAGs' model_name Param (JSON schema), so the trigger form refuses what this refuses.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MODEL_NAME_RULE = (f"a model name is 1 to {MODEL_NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter "
                   "or digit (it is a directory and a REST URL segment of TensorFlow Serving: no '/', '\\', ':', "
                   "spaces or NUL, not '.' or '..')")
_VALID = re.compile(MODEL_NAME_PATTERN)


def _problem(name: str) -> str:
    """What is wrong with ``name``, in a few words (the first problem found)."""
    if name == "":
        return "it is empty"
    if name in (".", ".."):
        return f"{name!r} is a relative directory"
    for char, what in (("\0", "a NUL character"), ("/", "'/'"), ("\\", "'\\'"), (":", "':'")):
        if char in name:
            return f"it contains {what}"
    if len(name) > MODEL_NAME_MAX:
        return f"it is {len(name)} characters long"
    if not name[0].isascii() or not name[0].isalnum():
        return f"it starts with {name[0]!r}"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
    return f"it contains {', '.join(map(repr, bad))}"


def check_model_name(name: object, where: str) -> str:
    """Return ``name`` if it is a valid serving model name, else raise ``ValueError`` naming ``where`` (the
    config key or command-line flag it came from), the problem and the rule.

    Args:
        name: the candidate model name (anything: a non-string is refused too).
        where: what to call its origin in the message, e.g. ``"serving.model_name"`` or ``"--model-name"``.
    """
    if not isinstance(name, str):
        raise ValueError(f"{where}: a model name must be a string, got {name!r} ({type(name).__name__}); "
                         f"{MODEL_NAME_RULE}")
    if _VALID.fullmatch(name) is None:
        raise ValueError(f"{where}: invalid model name {name!r}: {_problem(name)}; {MODEL_NAME_RULE}")
    return name


def model_name_from(text: str, default: str = "model") -> str:
    """A valid model name made from ``text`` (a file's stem): characters outside the rule become ``_``, leading
    ones that may not start a name are dropped, and it is cut to the maximum length; ``default`` if nothing is
    left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip("._-")[:MODEL_NAME_MAX]
    return name or default


def model_name_flag(value: str) -> str:
    """``argparse`` ``type=`` of a flag that takes a model name: a bad one is a usage error that names the flag
    (argparse adds it: ``argument --model-name: invalid model name 'a/b': ...``) and the rule."""
    import argparse

    try:
        return check_model_name(value, "model name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("model name: ")) from None
