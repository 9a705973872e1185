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


FEATURE_LIST_KEYS = ("numeric", "categorical", "exclude", "boolean", "high_cardinality", "text", "datetime")
FEATURE_KNOBS = {"max_vocabulary": int, "min_frequency": int, "hash_buckets": int, "text_max_tokens": int,
                 "text_ngrams": int, "id_unique_ratio": float, "text_min_words": float, "value_ids": int}


@dataclass(frozen=True)
class FeaturesConfig:
    """Feature kinds by column, and how they are inferred and encoded.

    Columns can be pinned in lists by kind (``numeric: [a, b]``, ``text: [c]``, ``exclude: [d]``...) or one by one
    (``features: {zip_code: categorical}``): ``kinds`` holds both, column -> kind. Columns not pinned are
    inferred from the data (``pipeline.features.infer_kind``)."""

    kinds: Mapping[str, str] = field(default_factory=dict)
    max_vocabulary: int = 1000      # categorical values kept (most frequent first); more -> high_cardinality
    min_frequency: int = 2          # a value rarer than this in the training split is out of vocabulary
    hash_buckets: int = 64          # out-of-vocabulary slots of a high-cardinality column (hashed)
    text_max_tokens: int = 5000     # words and bigrams kept per text column
    text_ngrams: int = 2
    id_unique_ratio: float = 0.95   # a string column with this share of distinct values is an identifier
    text_min_words: float = 3.0     # mean words per value from which a many-valued string column is free text
    value_ids: int = 1000           # a numeric column with at most this many distinct values is also embedded by value; 0: never

    def of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(c for c, k in self.kinds.items() if k == kind)

    @property
    def numeric(self) -> tuple[str, ...]:
        return self.of_kind("numeric")

    @property
    def categorical(self) -> tuple[str, ...]:
        return self.of_kind("categorical")

    @property
    def exclude(self) -> tuple[str, ...]:
        return self.of_kind("exclude")


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
    """The model: a builder registered in ``models/`` by name, or ``module``, a user's own builder
    (``path/to/my_model.py`` with a ``build(inputs, spec, **params)``, or ``package.module:function``)."""

    builder: str = "tabular"
    params: Mapping[str, Any] = field(default_factory=dict)
    module: str | None = None

    def build_fn(self):
        from models import get_builder, load_module_builder

        return load_module_builder(self.module) if self.module else get_builder(self.builder)

    @property
    def label(self) -> str:
        return f"module {self.module!r}" if self.module else repr(self.builder)


LR_SCHEDULES = ("warmup_cosine", "constant")
CLASS_WEIGHTS = ("auto", "balanced", "none")


@dataclass(frozen=True)
class TrainingConfig:
    """How the model is fitted. ``epochs``/``batch_size``/``early_stopping_patience`` left empty scale with the
    data: the batch is a power of two near the square root of the training rows (32..1024), the epochs spend
    about ``step_budget`` optimizer steps (between ``min_epochs`` and ``max_epochs``), and early stopping on the
    validation loss waits a tenth of them (at least 5). ``max_minutes`` bounds the fit's wall time."""

    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "adamw"
    learning_rate: float = 0.002
    weight_decay: float = 1e-4              # AdamW only
    lr_schedule: str = "warmup_cosine"      # warmup_cosine | constant
    warmup_fraction: float = 0.05           # of the planned steps, for warmup_cosine
    early_stopping_patience: int | None = None
    step_budget: int = 6000
    min_epochs: int = 10
    max_epochs: int = 200
    max_minutes: float | None = None
    class_weight: str = "auto"              # auto | balanced | none (see pipeline.preprocess.class_weights)
    mixed_precision: bool = False


@dataclass(frozen=True)
class LabelsConfig:
    """What happens to rows and classes of the label: rows without a label are always dropped (and counted);
    a class with fewer than ``min_class_rows`` rows is an error (``rare_classes: error``), merged into
    ``merged_class`` (``merge``) or dropped (``drop``)."""

    min_class_rows: int = 5
    rare_classes: str = "error"
    merged_class: str = "other"


RARE_CLASS_RULES = ("error", "merge", "drop")


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
    labels: LabelsConfig = LabelsConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    serving: ServingConfig = ServingConfig()
    deploy: DeployConfig = DeployConfig()
    # The drift monitor's section, read by pipeline.monitoring.monitor.MonitorConfig (kept as plain data here).
    monitoring: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`from_dict` reads back into the same config (the YAML layout)."""
        raw = _plain(dataclasses.asdict(self))
        feats = raw.pop("features")
        raw["features"] = {**feats.pop("kinds"), **feats}
        return raw

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


def _features(raw: Any) -> FeaturesConfig:
    """The ``features`` section: lists by kind, ``column: kind`` entries and the inference/encoding knobs."""
    from pipeline.features import PINNABLE_KINDS

    if raw is None:
        return FeaturesConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config section 'features' must be a mapping, got {type(raw).__name__}")
    kinds: dict[str, str] = {}
    knobs: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in FEATURE_LIST_KEYS:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"features.{key} must be a list of column names, got {value!r}")
            for col in value:
                if str(col) in kinds and kinds[str(col)] != key:
                    raise ConfigError(f"features: column {col!r} is listed as both {kinds[str(col)]} and {key}")
                kinds[str(col)] = key
        elif key in FEATURE_KNOBS:
            try:
                knobs[key] = FEATURE_KNOBS[key](value)
            except (TypeError, ValueError):
                raise ConfigError(f"features.{key} must be a number, got {value!r}") from None
        else:
            if not isinstance(value, str) or value not in PINNABLE_KINDS:
                raise ConfigError(f"features.{key}: kind must be one of {', '.join(PINNABLE_KINDS)}, got {value!r} "
                                  f"(or {key!r} is a misspelt setting: {', '.join(FEATURE_KNOBS)})")
            if key in kinds and kinds[key] != value:
                raise ConfigError(f"features: column {key!r} is listed as both {kinds[key]} and {value}")
            kinds[key] = value
    return FeaturesConfig(kinds=kinds, **knobs)


def from_dict(raw: Mapping[str, Any]) -> PipelineConfig:
    """Build and check a :class:`PipelineConfig` from plain data (parsed YAML, Airflow params)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping at top level")
    top = {"name", "source", "label", "task", "features", "labels", "split", "model", "training", "gate", "serving", "deploy", "monitoring"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s): {', '.join(unknown)}")
    for key in ("source", "label"):
        if not raw.get(key) or not isinstance(raw.get(key), str):
            raise ConfigError(f"config key {key!r} is required and must be a string")
    model_raw = dict(raw.get("model") or {})
    module = model_raw.pop("module", None)
    model = ModelConfig(builder=str(model_raw.pop("builder", "tabular")), params=dict(model_raw.pop("params", {}) or {}),
                        module=str(module) if module else None)
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
        features=_features(raw.get("features")),
        labels=_section(LabelsConfig, raw.get("labels"), "labels"),
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
    if (t.epochs is not None and t.epochs < 1) or (t.batch_size is not None and t.batch_size < 1):
        raise ConfigError("training.epochs and training.batch_size must be >= 1 (or absent: chosen from the data)")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"training.optimizer must be one of {OPTIMIZERS}, got {t.optimizer!r}")
    if not t.learning_rate > 0:
        raise ConfigError("training.learning_rate must be > 0")
    if cfg.gate.max_regression < 0:
        raise ConfigError("gate.max_regression must be >= 0")
    if cfg.label in cfg.features.kinds:
        raise ConfigError(f"features.{cfg.label}: the label {cfg.label!r} is also listed as a feature")
    fc = cfg.features
    if fc.max_vocabulary < 1 or fc.min_frequency < 1 or fc.hash_buckets < 1 or fc.text_max_tokens < 2 or fc.text_ngrams < 1:
        raise ConfigError("features.max_vocabulary, min_frequency, hash_buckets, text_ngrams must be >= 1 and "
                          "features.text_max_tokens >= 2")
    if fc.value_ids < 0:
        raise ConfigError(f"features.value_ids must be >= 0 (0: numeric columns are never embedded by value), "
                          f"got {fc.value_ids}")
    if cfg.labels.rare_classes not in RARE_CLASS_RULES:
        raise ConfigError(f"labels.rare_classes must be one of {RARE_CLASS_RULES}, got {cfg.labels.rare_classes!r}")
    if cfg.labels.min_class_rows < 1:
        raise ConfigError("labels.min_class_rows must be >= 1")
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"training.lr_schedule must be one of {LR_SCHEDULES}, got {t.lr_schedule!r}")
    if t.class_weight not in CLASS_WEIGHTS:
        raise ConfigError(f"training.class_weight must be one of {CLASS_WEIGHTS}, got {t.class_weight!r}")
    if t.max_minutes is not None and not t.max_minutes > 0:
        raise ConfigError("training.max_minutes must be > 0 (or absent)")
    if not 0 <= t.warmup_fraction < 1 or t.step_budget < 1 or not 1 <= t.min_epochs <= t.max_epochs:
        raise ConfigError("training.warmup_fraction must be in [0, 1), training.step_budget >= 1 and "
                          "1 <= training.min_epochs <= training.max_epochs")
    try:
        from models import check_params

        check_params(cfg.model.build_fn(), cfg.model.params, cfg.model.label)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
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
    raw = raw or {}
    module = (raw.get("model") or {}).get("module") if isinstance(raw, Mapping) else None
    if isinstance(module, str) and ".py" in module and not Path(module).is_absolute():
        # a module file is found beside the config first (as TFX's module_file), then from the working directory
        beside = path.resolve().parent / module
        if (beside.parent / beside.name.partition(".py:")[0]).with_suffix(".py").exists() or beside.exists():
            raw = {**raw, "model": {**raw["model"], "module": str(beside)}}
    cfg = from_dict(raw)
    return cfg.with_overrides(overrides) if overrides else cfg
