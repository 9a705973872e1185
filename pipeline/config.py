"""The pipeline's configuration: YAML loaded once into a typed, frozen object and passed explicitly.

Every section is a frozen pydantic dataclass: each key is typed and bounded, unknown keys are refused with the
closest known name, booleans are only real booleans, and numbers written in a way YAML 1.1 reads as strings
(``1e-3``) are numbers. Every error is a :class:`ConfigError` that names the key path (``training.epochs: ...``).

Nothing here reads the data; anything that needs the data to decide (feature types, the task) is left as
``None`` and resolved by :func:`pipeline.features.infer_features` at validate time, then stored in the schema.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from pipeline.paths import DEFAULT_CONFIG  # noqa: F401  (re-exported: callers import it from here)

TASKS = ("classification", "regression")
SPLIT_STRATEGIES = ("stratified", "random", "hash", "time")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PROMOTION_RULES = ("manual", "immediate")
# the allowed values of the keys below, used as their types (``Literal[OPTIMIZERS]``)
LR_SCHEDULES = ("warmup_cosine", "cosine", "constant", "exponential", "step", "reduce_on_plateau")
CLASS_WEIGHTS = ("auto", "balanced", "none")
RARE_CLASS_RULES = ("error", "merge", "drop")
# How a tuned parameter is drawn (pipeline.tuning.space), and the pruners of the tuning study
SEARCH_KINDS = ("log_uniform", "uniform", "int", "choice")
PRUNERS = ("median", "none")
# What pipeline.evaluate computes (tests/unit/test_config.py keeps these in step with it); a classification
# metric may also be per class: precision_<class>, recall_<class>, f1_<class>.
GATE_METRICS = {
    "classification": ("accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "roc_auc_ovr"),
    "regression": ("mae", "rmse", "r2"),
}
PER_CLASS_METRIC_PREFIXES = ("precision_", "recall_", "f1_")
SEED_MAX = 2**32 - 1  # numpy's and Keras' seeds are 32-bit


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


# -- value types: lenient about how YAML spells a number, strict about what is not one ---------------------------

def _as_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


def _as_int(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"must be a whole number, got {value!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number, got {value!r}")
        value = int(value)
    return value


Float = Annotated[float, BeforeValidator(_as_float)]
Int = Annotated[int, BeforeValidator(_as_int)]
Name = Annotated[StrictStr, Field(min_length=1)]
Seed = Annotated[Int, Field(ge=0, le=SEED_MAX)]

_SECTION = ConfigDict(extra="forbid")


FEATURE_LIST_KEYS = ("numeric", "categorical", "exclude", "boolean", "high_cardinality", "text", "datetime", "image")
FEATURE_KNOBS = {"max_vocabulary": int, "min_frequency": int, "hash_buckets": int, "text_max_tokens": int,
                 "text_ngrams": int, "id_unique_ratio": float, "text_min_words": float, "value_ids": int,
                 "fit_sample_rows": int, "text_sequence_length": int, "image_height": int, "image_width": int,
                 "image_channels": int}


@dataclass(frozen=True, config=_SECTION)
class FeaturesConfig:
    """Feature kinds by column, and how they are inferred and encoded.

    Columns can be pinned in lists by kind (``numeric: [a, b]``, ``text: [c]``, ``exclude: [d]``...) or one by one
    (``features: {zip_code: categorical}``): ``kinds`` holds both, column -> kind. Columns not pinned are
    inferred from the data (``pipeline.features.infer_kind``)."""

    kinds: Mapping[str, str] = field(default_factory=dict)
    # categorical values kept (most frequent first); more -> high_cardinality
    max_vocabulary: Annotated[Int, Field(ge=1)] = 1000
    # a value rarer than this in the training split is out of vocabulary
    min_frequency: Annotated[Int, Field(ge=1)] = 2
    hash_buckets: Annotated[Int, Field(ge=1)] = 64       # out-of-vocabulary slots of a high-cardinality column
    text_max_tokens: Annotated[Int, Field(ge=2)] = 5000  # words and bigrams kept per text column
    text_ngrams: Annotated[Int, Field(ge=1, le=5)] = 2
    # a string column with this share of distinct values is an identifier
    id_unique_ratio: Annotated[Float, Field(gt=0, le=1)] = 0.95
    # mean words per value from which a many-valued string column is free text
    text_min_words: Annotated[Float, Field(gt=0)] = 3.0
    # a numeric column with at most this many distinct values is also embedded by value; 0: never
    value_ids: Annotated[Int, Field(ge=0)] = 1000
    # a larger table's feature kinds are inferred, and a larger training split's encodings fitted, on a uniform
    # sample of this many rows; counts and statistics are over every row (pipeline.validate.validate_parquet,
    # pipeline.preprocess.fit_preprocessing_parquet)
    fit_sample_rows: Annotated[Int, Field(ge=1)] = 200_000
    # text columns also as the ids of their first N words (tokens__<key>) for sequence builders (text_cnn,
    # text_transformer); None: TF-IDF only (pipeline.preprocess)
    text_sequence_length: Optional[Annotated[Int, Field(ge=2, le=4096)]] = None
    # the size image columns are resized to and their channels (1 grey, 3 RGB); None: the training images'
    # median height/width and most common channel count (pipeline.preprocess)
    image_height: Optional[Annotated[Int, Field(ge=8, le=1024)]] = None
    image_width: Optional[Annotated[Int, Field(ge=8, le=1024)]] = None
    image_channels: Optional[Literal[1, 3]] = None

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


@dataclass(frozen=True, config=_SECTION)
class SplitConfig:
    """The train/val/test ratios (summing to 1) and how rows are assigned (``pipeline.split``); ``seed`` is the
    split's only: the training seed is ``training.seed``."""

    train: Annotated[Float, Field(gt=0, lt=1)] = 0.7
    val: Annotated[Float, Field(ge=0, lt=1)] = 0.15
    test: Annotated[Float, Field(gt=0, lt=1)] = 0.15
    seed: Seed = 42
    # hash: a row keeps its split when rows are appended (the champion is never scored on its training rows)
    strategy: Literal[SPLIT_STRATEGIES] = "hash"
    key_column: Optional[Name] = None
    time_column: Optional[Name] = None

    @model_validator(mode="after")
    def _consistent(self) -> "SplitConfig":
        if abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"ratios must sum to 1 (got train={self.train}, val={self.val}, test={self.test})")
        if self.strategy == "time" and not self.time_column:
            raise ValueError("time_column: required by strategy 'time' (the column the rows are ordered by)")
        return self


@dataclass(frozen=True, config=_SECTION)
class ModelConfig:
    """The model: a builder registered in ``models/`` by name, or ``module``, a user's own builder
    (``path/to/my_model.py`` with a ``build(inputs, spec, **params)``, or ``package.module:function``)."""

    builder: Name = "tabular"
    params: Mapping[str, Any] = field(default_factory=dict)
    module: Optional[Name] = None

    def build_fn(self):
        from models import get_builder, load_module_builder

        return load_module_builder(self.module) if self.module else get_builder(self.builder)

    @property
    def label(self) -> str:
        return f"module {self.module!r}" if self.module else repr(self.builder)


@dataclass(frozen=True, config=_SECTION)
class TrainingConfig:
    """How the model is fitted. ``epochs``/``batch_size``/``early_stopping_patience`` left empty scale with the
    data: the batch is a power of two near the square root of the training rows (32..1024), the epochs spend
    about ``step_budget`` optimizer steps (between ``min_epochs`` and ``max_epochs``), and early stopping on the
    validation loss waits a fifth of them (at least 10). ``max_minutes`` bounds the fit's wall time. ``seed``
    seeds the weights and the shuffling (the split has its own, ``split.seed``)."""

    epochs: Optional[Annotated[Int, Field(ge=1, le=10000)]] = None
    batch_size: Optional[Annotated[Int, Field(ge=1, le=65536)]] = None
    optimizer: Literal[OPTIMIZERS] = "adamw"
    learning_rate: Annotated[Float, Field(gt=0, le=10)] = 0.002
    weight_decay: Annotated[Float, Field(ge=0, lt=1)] = 1e-4   # AdamW only
    lr_schedule: Literal[LR_SCHEDULES] = "warmup_cosine"
    warmup_fraction: Annotated[Float, Field(ge=0, lt=1)] = 0.05  # of the planned steps, for warmup_cosine
    # exponential: the rate is multiplied by lr_decay_rate every lr_decay_epochs (smoothly; default: the planned
    # epochs); step: likewise, in steps (default: a third of them); reduce_on_plateau: the factor applied when
    # the monitored loss has not improved for lr_plateau_patience epochs (default: half the early stopping's)
    lr_decay_rate: Annotated[Float, Field(gt=0, lt=1)] = 0.1
    lr_decay_epochs: Optional[Annotated[Int, Field(ge=1, le=10000)]] = None
    lr_plateau_patience: Optional[Annotated[Int, Field(ge=1)]] = None
    clipnorm: Optional[Annotated[Float, Field(gt=0)]] = None    # each gradient's norm clipped to this
    clipvalue: Optional[Annotated[Float, Field(gt=0)]] = None   # each gradient element clipped to +-this
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = 0.0  # classification only
    tensorboard: StrictBool = False  # TensorBoard logs under the run's directory, logged to MLflow
    early_stopping_patience: Optional[Annotated[Int, Field(ge=1)]] = None
    step_budget: Annotated[Int, Field(ge=1)] = 6000
    min_epochs: Annotated[Int, Field(ge=1, le=10000)] = 10
    max_epochs: Annotated[Int, Field(ge=1, le=10000)] = 200
    max_minutes: Optional[Annotated[Float, Field(gt=0, le=10080)]] = None
    class_weight: Literal[CLASS_WEIGHTS] = "auto"  # see pipeline.preprocess.class_weights
    mixed_precision: StrictBool = False
    # auto: TPU, else several GPUs mirrored, one GPU, or the CPU; mirrored: tf.distribute.MirroredStrategy over
    # every GPU, else every logical CPU device (pipeline.train.select_strategy); multi_worker:
    # MultiWorkerMirroredStrategy over `workers` processes (pipeline.multi_worker: beside the task on
    # 127.0.0.1, or the pods of an indexed Kubernetes Job that set TF_CONFIG).
    distribution: Literal["auto", "mirrored", "multi_worker"] = "auto"
    workers: Annotated[Int, Field(ge=1, le=256)] = 1
    seed: Seed = 42
    # Training from the split's Parquet files (pipeline.datasets.parquet_dataset): processed rows up to
    # in_memory_mb are computed once and kept as tensors (twice that for a moment while they are built); beyond
    # that each epoch streams the files, shuffling blocks of shuffle_buffer rows (None: 262,144).
    shuffle_buffer: Optional[Annotated[Int, Field(ge=1)]] = None
    in_memory_mb: Annotated[Int, Field(ge=0)] = 256

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingConfig":
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs: {self.min_epochs} is more than max_epochs ({self.max_epochs})")
        if self.distribution == "multi_worker" and self.workers < 2:
            raise ValueError("workers: multi_worker training needs at least 2 (got "
                             f"{self.workers}); with one process use distribution auto or mirrored")
        if self.workers > 1 and self.distribution != "multi_worker":
            raise ValueError(f"workers: {self.workers} worker processes need distribution: multi_worker "
                             f"(it is {self.distribution!r})")
        if self.clipnorm is not None and self.clipvalue is not None:
            raise ValueError("clipvalue: cannot be set together with clipnorm (a Keras optimizer takes one of them)")
        return self


@dataclass(frozen=True, config=_SECTION)
class LabelsConfig:
    """What happens to rows and classes of the label: rows without a label are always dropped (and counted);
    a class with fewer than ``min_class_rows`` rows is an error (``rare_classes: error``), merged into
    ``merged_class`` (``merge``) or dropped (``drop``)."""

    min_class_rows: Annotated[Int, Field(ge=1)] = 5
    rare_classes: Literal[RARE_CLASS_RULES] = "error"
    merged_class: Name = "other"


@dataclass(frozen=True, config=_SECTION)
class GateConfig:
    """When a candidate is *blessed*: every threshold met, and ``metric`` no worse than the champion's by more
    than ``max_regression`` (for error metrics such as ``rmse`` lower is better; see ``pipeline.evaluate``)."""

    metric: Optional[Name] = None   # None: accuracy for classification, rmse for regression
    thresholds: Mapping[str, Float] = field(default_factory=dict)
    max_regression: Annotated[Float, Field(ge=0)] = 0.02


@dataclass(frozen=True, config=_SECTION)
class ServingConfig:
    model_name: Name = "model"   # checked by pipeline.names.check_model_name


@dataclass(frozen=True, config=_SECTION)
class ImagesConfig:
    """How ingest reads an image source (``pipeline.images``): a folder of class subfolders, or a CSV/Parquet
    manifest whose ``path_column`` holds the files' paths (relative to the manifest's folder) beside the label.
    The snapshot holds each file's encoded bytes in ``column`` (the endpoint's input of that name)."""

    column: Name = "image"
    path_column: Name = "path"
    max_pixels: Annotated[Int, Field(ge=1)] = 40_000_000   # a larger image is refused by name, not resized blindly


@dataclass(frozen=True, config=_SECTION)
class RetentionConfig:
    """Which run directories stay on disk (``pipeline.retention``, applied after every deploy task and by
    ``pipeline retention``): a run that produced no served version is removed once it is neither among the
    ``keep_runs`` newest nor younger than ``keep_days``; ``enabled: false`` keeps everything."""

    enabled: StrictBool = True
    keep_runs: Annotated[Int, Field(ge=0)] = 20
    keep_days: Annotated[Float, Field(ge=0)] = 30.0


@dataclass(frozen=True, config=_SECTION)
class ExecutionConfig:
    """Where the TensorFlow stages' tasks run when one process runs every task of the DAG run (``pipeline
    train``; ``pipeline.task_process``). ``shared`` (default): in that process, TensorFlow imported once.
    ``own``: each in a child process of its own, as Airflow's executors run every task: a stage that crashes
    the interpreter or is killed for memory fails as a task (retried, reported) instead of ending ``pipeline
    train``, and no stage inherits what another allocated. It costs a TensorFlow import per stage (a few seconds)
    and memory while a stage runs: the child's ~700 MB of TensorFlow beside the parent's Airflow (2M generated
    rows: train's peak 2.6 GB against 1.9 GB shared; docs/benchmarks.md, "Data bigger than memory")."""

    task_processes: Literal["shared", "own"] = "shared"


@dataclass(frozen=True, config=_SECTION)
class DeployConfig:
    """How a blessed version reaches the serving directory (``pipeline.deploy``, docs/deployment.md).

    ``tf_serving_rest_url``/``tf_serving_grpc_target``/``tf_serving_model_base_path`` name a real TensorFlow
    Serving to validate candidates against instead of our sandboxed server: the candidate is copied into that
    base path (which the server must poll) and checked over its REST and gRPC ports."""

    latency_budget_ms: Annotated[Float, Field(gt=0)] = 500.0  # p99 of single-row predicts (REST, gRPC) in the sandbox
    latency_requests: Annotated[Int, Field(ge=1)] = 50        # single-row requests per API for the p99
    max_abs_diff: Annotated[Float, Field(ge=0)] = 1e-5        # served answers vs the evaluation stage's predictions
    keep_versions: Annotated[Int, Field(ge=1)] = 5            # retention: the newest N versions stay (plus the aliased)
    canary: StrictBool = False                  # publish new versions as `challenger` (label canary), not champion
    # canary -> stable: manual (`pipeline promote`) | immediate
    promotion_rule: Literal[PROMOTION_RULES] = "manual"
    allow_signature_change: StrictBool = False  # let a candidate change the champion's serving signature
    # test rows (a uniform sample of the scored ones) the served candidate must answer like the evaluation; 0: all
    check_rows: Annotated[Int, Field(ge=0)] = 10_000
    warmup_rows: Annotated[Int, Field(ge=0)] = 5              # rows of the test split written as warmup requests
    ready_timeout_s: Annotated[Float, Field(gt=0)] = 300.0    # how long the validation server may take to load it
    tf_serving_rest_url: Optional[Name] = None
    tf_serving_grpc_target: Optional[Name] = None
    tf_serving_model_base_path: Optional[Name] = None

    @model_validator(mode="after")
    def _consistent(self) -> "DeployConfig":
        if bool(self.tf_serving_rest_url) != bool(self.tf_serving_model_base_path):
            raise ValueError("tf_serving_rest_url: goes together with tf_serving_model_base_path (both or neither)")
        return self


@dataclass(frozen=True, config=_SECTION)
class SearchParam:
    """One tuned parameter: drawn from ``[low, high]`` (``log_uniform``, ``uniform``; ``int`` in steps of
    ``step``) or one of ``values`` (``choice``; lists and mappings allowed as values)."""

    type: Literal[SEARCH_KINDS]
    low: Optional[Float] = None
    high: Optional[Float] = None
    step: Optional[Annotated[Float, Field(gt=0)]] = None
    values: Optional[list] = None

    @model_validator(mode="after")
    def _consistent(self) -> "SearchParam":
        if self.type == "choice":
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("values: a choice takes values only (no low, high or step)")
            if not self.values:
                raise ValueError(f"values: a choice needs at least one value, got {self.values!r}")
            return self
        if self.values is not None:
            raise ValueError(f"values: only a choice takes values; {self.type} takes low and high")
        if self.low is None or self.high is None:
            raise ValueError(f"{'low' if self.low is None else 'high'}: required by {self.type}, and missing")
        if self.low > self.high:
            raise ValueError(f"low: {self.low:g} is above high ({self.high:g})")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError(f"low: must be > 0 for log_uniform, got {self.low:g}")
        if self.type == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and not float(value).is_integer():
                    raise ValueError(f"{key}: must be a whole number for int, got {value!r}")
        elif self.type == "log_uniform" and self.step is not None:
            raise ValueError("step: log_uniform takes no step")
        return self


@dataclass(frozen=True, config=_SECTION)
class TuningConfig:
    """Hyperparameter tuning (``pipeline tune``, dags/tuning_pipeline.py, docs/features.md "Tuning"): ``space``
    maps dotted keys of ``model.params.*`` and ``training.*`` to how each is drawn; ``n_trials`` trials in
    rounds of ``trials_per_round`` parallel trial tasks; ``objective`` (default: the gate's metric) scored on the
    validation split; the per-epoch validation metric drives the ``pruner``. ``storage``: Optuna's RDB URL
    (default: ``$PIPELINE_TUNING_STORAGE``, else SQLite under PIPELINE_HOME)."""

    space: Mapping[str, SearchParam]
    n_trials: Annotated[Int, Field(ge=1, le=1000)] = 20
    trials_per_round: Annotated[Int, Field(ge=1, le=64)] = 2
    objective: Optional[Name] = None
    pruner: Literal[PRUNERS] = "median"
    pruner_warmup_epochs: Annotated[Int, Field(ge=0)] = 3   # epochs of a trial never pruned
    startup_trials: Annotated[Int, Field(ge=0)] = 4         # random trials before TPE, finished ones before pruning
    seed: Optional[Seed] = None                             # the sampler's; default training.seed
    storage: Optional[Name] = None

    @model_validator(mode="after")
    def _consistent(self) -> "TuningConfig":
        if not self.space:
            raise ValueError("space: at least one parameter to tune, got none")
        return self


@dataclass(frozen=True, config=_SECTION)
class PipelineConfig:
    name: Name
    source: Name
    label: Name
    task: Optional[Literal[TASKS]] = None
    features: FeaturesConfig = FeaturesConfig()
    labels: LabelsConfig = LabelsConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    serving: ServingConfig = ServingConfig()
    deploy: DeployConfig = DeployConfig()
    retention: RetentionConfig = RetentionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    images: Optional[ImagesConfig] = None   # set: the source is images (also found by itself for a folder of them)
    tuning: Optional[TuningConfig] = None   # pipeline tune only; training_pipeline ignores it
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
            for i, part in enumerate(parents):
                if not isinstance(node.get(part), dict):
                    raise _unknown_override(key, ".".join(parents[:i]), node)
                node = node[part]
            if leaf not in node and not (parents and parents[-1] in {"params", "thresholds", "monitoring"}):
                raise _unknown_override(key, ".".join(parents), node)
            node[leaf] = value
        return from_dict(raw)


def _unknown_override(key: str, prefix: str, node: Mapping[str, Any]) -> ConfigError:
    known = [f"{prefix}.{k}" if prefix else str(k) for k in node]
    close = difflib.get_close_matches(key, known, n=1)
    return ConfigError(f"unknown config key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- errors ---------------------------------------------------------------------------------------------------

def _unknown_key(key: Any, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return f"unknown key {key!r} {where}{hint}"


def _section_at(loc: tuple) -> type | None:
    """The config class whose fields sit at ``loc`` (a pydantic error location), None past the sections."""
    import typing

    cls: Any = PipelineConfig
    for part in loc:
        if typing.get_origin(cls) is typing.Union:  # Optional[Section]
            cls = next((a for a in typing.get_args(cls) if hasattr(a, "__pydantic_fields__")), cls)
        fields = getattr(cls, "__pydantic_fields__", None)
        if not fields and typing.get_args(cls):  # Mapping[str, Section]: ``part`` is one of its keys
            cls = typing.get_args(cls)[-1]
            continue
        if not fields or part not in fields:
            return None
        cls = fields[part].annotation
    if typing.get_origin(cls) is typing.Union:
        cls = next((a for a in typing.get_args(cls) if hasattr(a, "__pydantic_fields__")), cls)
    return cls if hasattr(cls, "__pydantic_fields__") else None


_YAML_BOOL_HINT = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``key.path: problem, got value``."""
    loc, kind, value, ctx = tuple(error["loc"]), error["type"], error.get("input"), error.get("ctx") or {}
    path = ".".join(map(str, loc))
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        cls = _section_at(loc[:-1])
        known = list(cls.__pydantic_fields__) if cls else []
        section = ".".join(map(str, loc[:-1]))
        return _unknown_key(loc[-1], known, f"in {section}" if section else "at the top level")
    if kind in ("missing", "missing_argument"):
        return f"{path}: required, and missing"
    message = {
        "literal_error": f"must be one of {ctx.get('expected', '').replace(chr(39), '')}",
        "string_type": "must be a string" + (_YAML_BOOL_HINT if isinstance(value, bool) else ""),
        "bool_type": "must be true or false (a YAML boolean, not a string or a number)",
        "greater_than": f"must be > {ctx.get('gt')}", "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}", "less_than_equal": f"must be <= {ctx.get('le')}",
        "string_too_short": "must not be empty",
        "dataclass_type": "must be a mapping", "dict_type": "must be a mapping", "mapping_type": "must be a mapping",
        "invalid_key": "keys must be strings",
        "float_parsing": "must be a number", "float_type": "must be a number",
        "int_parsing": "must be a whole number", "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
    }.get(kind)
    if message is None:
        message = str(error["msg"]).removeprefix("Value error, ")
        sub = re.match(r"([A-Za-z_][\w.]*): ", message)
        if sub and loc:  # a section's check naming one of its keys
            return f"{path}.{message}"
        return f"{path}: {message}" if path else message
    return f"{path}: {message}, got {value!r}" if path else f"{message}, got {value!r}"


def _config_error(exc: ValidationError) -> ConfigError:
    errors = exc.errors()
    if any(e["loc"] == ("source",) for e in errors):  # the name comes from the source: one error is enough
        errors = [e for e in errors if e["loc"] != ("name",)]
    return ConfigError("\n".join(dict.fromkeys(_describe(e) for e in errors)))


# -- the features: layout --------------------------------------------------------------------------------------

def _column(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        hint = _YAML_BOOL_HINT if isinstance(value, bool) else ""
        raise ConfigError(f"{where}: a column name must be a string, got {value!r}{hint}")
    return str(value)


def _features(raw: Any) -> Any:
    """The ``features`` section as FeaturesConfig's fields: lists by kind and ``column: kind`` entries become
    ``kinds``; the inference/encoding knobs are checked by FeaturesConfig itself."""
    from pipeline.features import PINNABLE_KINDS

    if not isinstance(raw, Mapping):
        raise ConfigError(f"features: must be a mapping (column: kind, lists by kind, knobs), got {raw!r}")
    kinds: dict[str, str] = {}
    knobs: dict[str, Any] = {}

    def pin(col: str, kind: str) -> None:
        if col in kinds and kinds[col] != kind:
            raise ConfigError(f"features: column {col!r} is listed as both {kinds[col]} and {kind}")
        kinds[col] = kind

    for key, value in raw.items():
        key = _column(key, "features")
        if key in FEATURE_LIST_KEYS:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"features.{key}: must be a list of column names, got {value!r}")
            for col in value:
                pin(_column(col, f"features.{key}"), key)
        elif key in FEATURE_KNOBS:
            knobs[key] = value
        elif isinstance(value, str) and value in PINNABLE_KINDS:
            pin(key, value)
        else:
            close = difflib.get_close_matches(key, [*FEATURE_KNOBS, *FEATURE_LIST_KEYS], n=1, cutoff=0.75)
            if close and not isinstance(value, str):
                raise ConfigError(_unknown_key(key, [*FEATURE_KNOBS, *FEATURE_LIST_KEYS], "in features"))
            raise ConfigError(f"features.{key}: kind must be one of {', '.join(PINNABLE_KINDS)}, got {value!r} "
                              f"(or {key!r} is a misspelt setting: {', '.join(FEATURE_KNOBS)})")
    return {"kinds": kinds, **knobs}


# -- building and checking -------------------------------------------------------------------------------------

SECTIONS = ("features", "labels", "split", "model", "training", "gate", "serving", "deploy", "monitoring", "tuning")


def from_dict(raw: Mapping[str, Any]) -> PipelineConfig:
    """Build and check a :class:`PipelineConfig` from plain data (parsed YAML, Airflow params).

    Raises:
        ConfigError: naming every invalid key by its path, and the problem.
    """
    from pipeline.names import model_name_from

    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping at top level, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if not (k in SECTIONS and v is None)}  # `training:` with nothing under it
    if not raw.get("name") and isinstance(raw.get("source"), str) and raw["source"]:
        # Derived, so made valid; a name given is checked as given.
        raw["name"] = model_name_from(Path(raw["source"]).stem)
    if isinstance(raw.get("name"), str) and raw["name"]:
        serving = raw.get("serving", {})
        if isinstance(serving, Mapping) and "model_name" not in serving:
            raw["serving"] = {**serving, "model_name": raw["name"]}
    if "features" in raw:
        raw["features"] = _features(raw["features"])
    try:
        cfg = _adapter().validate_python(raw)
    except ValidationError as exc:
        raise _config_error(exc) from None
    _check(cfg)
    return cfg


_ADAPTER = None


def _adapter():
    global _ADAPTER
    if _ADAPTER is None:
        from pydantic import TypeAdapter

        _ADAPTER = TypeAdapter(PipelineConfig)
    return _ADAPTER


def _check_metric(metric: str, task: str | None, where: str) -> None:
    tasks = [task] if task else list(GATE_METRICS)
    if any(metric in GATE_METRICS[t] for t in tasks):
        return
    if "classification" in tasks and metric.startswith(PER_CLASS_METRIC_PREFIXES) and \
            metric.split("_", 1)[1] not in ("", "macro"):
        return
    known = [m for t in tasks for m in GATE_METRICS[t]]
    close = difflib.get_close_matches(metric, known, n=1, cutoff=0.5)
    other = [t for t in GATE_METRICS if t not in tasks and metric in GATE_METRICS[t]]
    why = f"{metric!r} is a {other[0]} metric and the task is {task}" if other else f"unknown metric {metric!r}"
    per_class = ", precision_<class>, recall_<class>, f1_<class>" if "classification" in tasks else ""
    raise ConfigError(f"{where}: {why}" + (f"; did you mean {close[0]!r}?" if close and not other else "")
                      + f" (known{' for ' + task if task else ''}: {', '.join(known)}{per_class})")


def _check(cfg: PipelineConfig) -> None:
    """The checks that span sections or need the ``models`` package."""
    from pipeline.names import check_model_name

    for value, where in ((cfg.name, "name"), (cfg.serving.model_name, "serving.model_name")):
        try:
            check_model_name(value, where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.label in cfg.features.kinds:
        raise ConfigError(f"features.{cfg.label}: the label {cfg.label!r} is also listed as a feature")
    for key in ("key_column", "time_column"):
        if getattr(cfg.split, key) == cfg.label:
            raise ConfigError(f"split.{key}: {cfg.label!r} is the label; the split needs another column")
    if cfg.task == "regression" and cfg.training.label_smoothing:
        raise ConfigError(f"training.label_smoothing: applies to classification only, got "
                          f"{cfg.training.label_smoothing!r} for a regression task")
    if cfg.gate.metric is not None:
        _check_metric(cfg.gate.metric, cfg.task, "gate.metric")
    for metric in cfg.gate.thresholds:
        _check_metric(metric, cfg.task, f"gate.thresholds.{metric}")
    from models import check_params

    try:
        fn = cfg.model.build_fn()
    except ValueError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("model.") else f"model.builder: {message}") from exc
    try:
        check_params(fn, cfg.model.params, cfg.model.label)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.tuning is not None:
        if cfg.tuning.objective is not None:
            _check_metric(cfg.tuning.objective, cfg.task, "tuning.objective")
        from pipeline.tuning.space import check_space

        check_space(cfg)  # every key tunable, every bound a valid value of it


# -- YAML ------------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-3`` (a float in YAML 1.2 and JSON, a string in YAML 1.1) as a
    number, wherever it is: in ``model.params`` and ``monitoring`` too, which no type here checks."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML config (default ``conf/penguins.yaml``) and apply dotted-key overrides.

    Raises:
        ConfigError: the file is missing or not YAML, or a key is invalid (the message names the file and the key).
    """
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    raw = raw or {}
    model = raw.get("model") if isinstance(raw, Mapping) else None
    module = model.get("module") if isinstance(model, Mapping) else None
    if isinstance(module, str) and ".py" in module and not Path(module).is_absolute():
        # a module file is found beside the config first (as TFX's module_file), then from the working directory
        beside = path.resolve().parent / module
        if (beside.parent / beside.name.partition(".py:")[0]).with_suffix(".py").exists() or beside.exists():
            raw = {**raw, "model": {**model, "module": str(beside)}}
    try:
        cfg = from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return cfg.with_overrides(overrides) if overrides else cfg
