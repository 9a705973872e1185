"""The pipeline's configuration: YAML loaded once into a typed, frozen object and passed explicitly.

Nothing here reads the data; anything that needs the data to decide (feature types, the task) is left as
``None`` and resolved by :func:`pipeline.features.infer_features` at validate time, then stored in the schema.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.paths import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "conf" / "penguins.yaml"

TASKS = ("classification", "regression")
SPLIT_STRATEGIES = ("stratified", "random", "hash", "time")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PROMOTION_RULES = ("manual", "immediate")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature types by column. Empty tuples mean "infer from the data"."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 42
    strategy: str = "stratified"
    key_column: str | None = None
    time_column: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    builder: str = "mlp"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 0.01
    early_stopping_patience: int = 10
    mixed_precision: bool = False


@dataclass(frozen=True)
class GateConfig:
    """When a candidate is *blessed*: every threshold met, and ``metric`` no worse than the champion's by more
    than ``max_regression`` (for error metrics such as ``rmse`` lower is better; see ``pipeline.evaluate``)."""

    metric: str | None = None   # None: accuracy for classification, rmse for regression
    thresholds: Mapping[str, float] = field(default_factory=dict)
    max_regression: float = 0.02


@dataclass(frozen=True)
class ServingConfig:
    model_name: str = "model"


@dataclass(frozen=True)
class DeployConfig:
    """How a blessed version reaches the serving directory (``pipeline.deploy``, docs/deployment.md).

    ``tf_serving_rest_url``/``tf_serving_grpc_target``/``tf_serving_model_base_path`` name a real TensorFlow
    Serving to validate candidates against instead of our sandboxed server: the candidate is copied into that
    base path (which the server must poll) and checked over its REST and gRPC ports."""

    latency_budget_ms: float = 500.0      # p99 of single-row predicts (REST and gRPC) in the sandbox
    latency_requests: int = 50            # single-row requests per API for the p99
    max_abs_diff: float = 1e-5            # served answers vs the evaluation stage's predictions
    keep_versions: int = 5                # retention: the newest N versions stay on disk (plus the aliased)
    canary: bool = False                  # publish new versions as `challenger` (label canary), not champion
    promotion_rule: str = "manual"        # canary -> stable: manual (`pipeline promote`) | immediate
    allow_signature_change: bool = False  # let a candidate change the champion's serving signature
    warmup_rows: int = 5                  # rows of the test split written as warmup requests
    ready_timeout_s: float = 300.0        # how long the validation server may take to load the candidate
    tf_serving_rest_url: str | None = None
    tf_serving_grpc_target: str | None = None
    tf_serving_model_base_path: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    source: str
    label: str
    task: str | None = None
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    serving: ServingConfig = ServingConfig()
    deploy: DeployConfig = DeployConfig()
    # The drift monitor's section, read by pipeline.monitoring.monitor.MonitorConfig (kept as plain data here).
    monitoring: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "PipelineConfig":
        """A new config with dotted-key overrides applied (``{"training.epochs": 5, "source": "x.csv"}``)."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            node = raw
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config key {key!r}")
                node = node[part]
            if leaf not in node and not (parents and parents[-1] in {"params", "thresholds", "monitoring"}):
                raise ConfigError(f"unknown config key {key!r}")
            node[leaf] = value
        return from_dict(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section(cls: type, raw: Any, name: str):
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in {name!r}: {', '.join(unknown)}")
    kwargs = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any]) -> PipelineConfig:
    """Build and check a :class:`PipelineConfig` from plain data (parsed YAML, Airflow params)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping at top level")
    top = {"name", "source", "label", "task", "features", "split", "model", "training", "gate", "serving", "deploy", "monitoring"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s): {', '.join(unknown)}")
    for key in ("source", "label"):
        if not raw.get(key) or not isinstance(raw.get(key), str):
            raise ConfigError(f"config key {key!r} is required and must be a string")
    model_raw = dict(raw.get("model") or {})
    model = ModelConfig(builder=str(model_raw.pop("builder", "mlp")), params=dict(model_raw.pop("params", {}) or {}))
    if model_raw:
        raise ConfigError(f"unknown key(s) in 'model': {', '.join(sorted(model_raw))}")
    gate_raw = dict(raw.get("gate") or {})
    gate_raw["thresholds"] = {str(k): float(v) for k, v in (gate_raw.get("thresholds") or {}).items()}
    name = str(raw.get("name") or Path(raw["source"]).stem)
    serving_raw = dict(raw.get("serving") or {})
    serving_raw.setdefault("model_name", name)
    cfg = PipelineConfig(
        name=name,
        source=raw["source"],
        label=raw["label"],
        task=raw.get("task"),
        features=_section(FeaturesConfig, raw.get("features"), "features"),
        split=_section(SplitConfig, raw.get("split"), "split"),
        model=model,
        training=_section(TrainingConfig, raw.get("training"), "training"),
        gate=_section(GateConfig, gate_raw, "gate"),
        serving=_section(ServingConfig, serving_raw, "serving"),
        deploy=_section(DeployConfig, raw.get("deploy"), "deploy"),
        monitoring=dict(raw.get("monitoring") or {}),
    )
    _check(cfg)
    return cfg


def _check(cfg: PipelineConfig) -> None:
    if cfg.task is not None and cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {cfg.task!r}")
    s = cfg.split
    if s.strategy not in SPLIT_STRATEGIES:
        raise ConfigError(f"split.strategy must be one of {SPLIT_STRATEGIES}, got {s.strategy!r}")
    if min(s.train, s.val, s.test) < 0 or s.train <= 0 or s.test <= 0 or abs(s.train + s.val + s.test - 1) > 1e-6:
        raise ConfigError(f"split ratios must be non-negative, with train and test > 0, and sum to 1 "
                          f"(got train={s.train}, val={s.val}, test={s.test})")
    if s.strategy == "hash" and not s.key_column:
        raise ConfigError("split.strategy 'hash' needs split.key_column")
    if s.strategy == "time" and not s.time_column:
        raise ConfigError("split.strategy 'time' needs split.time_column")
    t = cfg.training
    if t.epochs < 1 or t.batch_size < 1:
        raise ConfigError("training.epochs and training.batch_size must be >= 1")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"training.optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}")
    if not t.learning_rate > 0:
        raise ConfigError("training.learning_rate must be > 0")
    if cfg.gate.max_regression < 0:
        raise ConfigError("gate.max_regression must be >= 0")
    overlap = set(cfg.features.numeric) & set(cfg.features.categorical)
    if overlap:
        raise ConfigError(f"feature(s) listed as both numeric and categorical: {', '.join(sorted(overlap))}")
    if cfg.label in set(cfg.features.numeric) | set(cfg.features.categorical):
        raise ConfigError(f"the label {cfg.label!r} is also listed as a feature")
    d = cfg.deploy
    if d.promotion_rule not in PROMOTION_RULES:
        raise ConfigError(f"deploy.promotion_rule must be one of {PROMOTION_RULES}, got {d.promotion_rule!r}")
    if d.keep_versions < 1 or d.latency_requests < 1 or d.warmup_rows < 0:
        raise ConfigError("deploy.keep_versions and deploy.latency_requests must be >= 1, deploy.warmup_rows >= 0")
    if not d.latency_budget_ms > 0 or not d.max_abs_diff >= 0:
        raise ConfigError("deploy.latency_budget_ms must be > 0 and deploy.max_abs_diff >= 0")
    if bool(d.tf_serving_rest_url) != bool(d.tf_serving_model_base_path):
        raise ConfigError("deploy.tf_serving_rest_url and deploy.tf_serving_model_base_path go together")
    if not cfg.serving.model_name or "/" in cfg.serving.model_name:
        raise ConfigError(f"serving.model_name must be a non-empty name without '/', got {cfg.serving.model_name!r}")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config (default ``conf/penguins.yaml``) and apply dotted-key overrides."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    cfg = from_dict(raw or {})
    return cfg.with_overrides(overrides) if overrides else cfg
