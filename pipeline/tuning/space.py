"""The search space of ``tuning.space``: which keys may be tuned, each bound checked as a value of its key, and
an Optuna draw turned into the dotted-key overrides a config takes (``PipelineConfig.with_overrides``).

Keys are ``training.<field>`` (any field of ``TrainingConfig``) and ``model.params.<name>`` (a keyword parameter
of the configured builder). Choices may be lists or mappings (``hidden_units: [[32], [64, 32]]``): Optuna draws
categorical values among numbers, strings and booleans only, so those are drawn as their JSON text.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from typing import TYPE_CHECKING, Any, Mapping

from pipeline.config import ConfigError, PipelineConfig, SearchParam, TrainingConfig

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

_PLAIN = (str, int, float, bool, type(None))


def tunable_keys(cfg: PipelineConfig) -> tuple[list[str], bool]:
    """Every key ``cfg`` could tune: the training fields and the builder's parameters; and whether the builder
    takes ``**params`` (then any ``model.params.<name>`` goes)."""
    import inspect

    sig = inspect.signature(cfg.model.build_fn())
    rest = list(sig.parameters.values())[2:]
    params = [p.name for p in rest if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keys = [f"training.{f}" for f in TrainingConfig.__pydantic_fields__] + [f"model.params.{p}" for p in params]
    return keys, any(p.kind == p.VAR_KEYWORD for p in rest)


def check_space(cfg: PipelineConfig) -> None:
    """Check ``cfg.tuning`` against the rest of the config: every key tunable, every bound (each choice) a valid
    value of its key, the budget within the DAG's rounds. At config load, before any trial runs.

    Raises:
        ConfigError: naming the key (``tuning.space.training.lr: unknown parameter; did you mean ...``).
    """
    from pipeline.tuning import MAX_ROUNDS

    tuning = cfg.tuning
    if tuning is None:
        return
    rounds = math.ceil(tuning.n_trials / tuning.trials_per_round)
    if rounds > MAX_ROUNDS:
        raise ConfigError(f"tuning.n_trials: {tuning.n_trials} trials at {tuning.trials_per_round} per round need "
                          f"{rounds} rounds; the tuning DAG runs at most {MAX_ROUNDS} (raise trials_per_round)")
    if cfg.split.val == 0:
        raise ConfigError("tuning: needs a validation split (split.val > 0, got 0): every trial is scored on it")
    base = dataclasses.replace(cfg, tuning=None)
    known, any_params = tunable_keys(cfg)
    for key, param in tuning.space.items():
        where = f"tuning.space.{key}"
        if key not in known and not (any_params and key.startswith("model.params.") and key.count(".") == 2):
            raise ConfigError(_unknown(where, key, known))
        for value in bound_values(param):
            try:
                base.with_overrides({key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {value!r} is not a valid value: {exc}") from None


def _unknown(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{where}: unknown parameter {key!r}{hint} (tunable: training.<field>, model.params.<parameter of "
            f"the builder>)")


def bound_values(param: SearchParam) -> list[Any]:
    """The values a draw can take at the edges: both bounds, or every choice."""
    if param.type == "choice":
        return list(param.values or [])
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def _encoded(param: SearchParam) -> bool:
    return param.type == "choice" and not all(isinstance(v, _PLAIN) for v in param.values or [])


def distributions(space: Mapping[str, SearchParam]) -> dict[str, "BaseDistribution"]:
    """Optuna's distribution of each key (what ``study.ask`` draws from)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for key, p in space.items():
        if p.type == "choice":
            values = [json.dumps(v, sort_keys=True) for v in p.values] if _encoded(p) else list(p.values)
            out[key] = CategoricalDistribution(values)
        elif p.type == "int":
            out[key] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
        else:
            out[key] = FloatDistribution(p.low, p.high, log=p.type == "log_uniform", step=p.step)
    return out


def to_overrides(drawn: Mapping[str, Any], space: Mapping[str, SearchParam]) -> dict[str, Any]:
    """A trial's ``params`` (as Optuna drew them) as config overrides: choices drawn as JSON text decoded."""
    return {k: json.loads(v) if k in space and _encoded(space[k]) else v for k, v in drawn.items()}
