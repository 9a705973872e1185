"""Command-line flags (TensorFlow Serving's own) and the text-format config files they point at."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts import MODELS_CONFIG as GENERATED_CONFIG  # under the serving base, written by pipeline.deploy
from pipeline.paths import request_log_dir, serving_base

DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"
GENERATED_CONFIG_POLL_S = 2.0


@dataclass(frozen=True)
class ModelConfig:
    """One served model: where its versions live, which of them to serve, and its version labels."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()

    def aspired(self, versions: set[int]) -> set[int]:
        """The versions this policy wants served, out of those that could be loaded."""
        if self.policy == "all":
            return set(versions)
        if self.policy == "specific":
            return versions & set(self.versions)
        return set(sorted(versions, reverse=True)[: self.num_versions])


@dataclass(frozen=True)
class BatchingOptions:
    """``BatchingParameters``: defaults are TensorFlow Serving's, except a bounded queue."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs, parsed once from the command line."""

    host: str = "127.0.0.1"
    grpc_port: int = 8500
    rest_port: int = 8501
    models: tuple[ModelConfig, ...] = ()
    serve_base: Path | None = None  # no model flags: every directory under this base is a model
    model_config_file: Path | None = None
    model_config_poll_s: float = 0.0
    file_system_poll_s: float = 1.0
    batching: BatchingOptions | None = None
    monitoring_path: str | None = None  # Prometheus path on the REST port, None = off
    rest_timeout_s: float = 30.0
    allow_labels_for_unavailable: bool = False
    enable_warmup: bool = True
    rest_threads: int = 4
    grpc_threads: int = 4
    max_request_bytes: int = 64 << 20
    request_log: bool = False
    request_log_sample_rate: float = 1.0
    request_log_dir: Path = field(default_factory=request_log_dir)
    shutdown_grace_s: float = 10.0
    workers: int = 1  # server processes on the same ports (pipeline/serving/workers.py)


def parse_text_proto(text: str) -> dict[str, Any]:
    """A small reader for text-format protobufs without a compiled schema (BatchingParameters,
    MonitoringConfig are not shipped in ``tensorflow-serving-api``). Repeated fields become lists."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}:;,<>\[\]]|[^\s{}:;,<>\[\]"\']+',
                        re.sub(r"#[^\n]*", "", text))
    pos = 0

    def value(token: str) -> Any:
        if token[0] in "\"'":
            return bytes(token[1:-1], "utf-8").decode("unicode_escape")
        if token in ("true", "True"):
            return True
        if token in ("false", "False"):
            return False
        try:
            return int(token, 0)
        except ValueError:
            try:
                return float(token)
            except ValueError:
                return token  # enum name

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(tokens):
            token = tokens[pos]
            if token in ("}", ">"):
                if end is None:
                    raise ValueError(f"unbalanced {token!r}")
                pos += 1
                return out
            if token in (",", ";"):
                pos += 1
                continue
            name = token
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ValueError(f"missing value for {name!r}")
            if tokens[pos] in ("{", "<"):
                pos += 1
                item: Any = message(tokens[pos - 1])
            else:
                item = value(tokens[pos])
                pos += 1
            if name in out:
                out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [item]
            else:
                out[name] = item
        if end is not None:
            raise ValueError("unterminated message")
        return out

    return message(None)


def _wrapped(params: dict[str, Any], name: str, default: int) -> int:
    item = params.get(name)
    if isinstance(item, dict):
        return int(item.get("value", default))
    return default if item is None else int(item)


def read_batching_parameters(path: Path | None) -> BatchingOptions:
    """``--batching_parameters_file`` (text ``BatchingParameters``, wrapper-typed fields)."""
    if path is None:
        return BatchingOptions()
    params = parse_text_proto(Path(path).read_text())
    default = BatchingOptions()
    return BatchingOptions(
        max_batch_size=_wrapped(params, "max_batch_size", default.max_batch_size),
        batch_timeout_micros=_wrapped(params, "batch_timeout_micros", default.batch_timeout_micros),
        max_enqueued_batches=_wrapped(params, "max_enqueued_batches", default.max_enqueued_batches),
        num_batch_threads=max(1, _wrapped(params, "num_batch_threads", default.num_batch_threads)),
    )


def read_monitoring_config(path: Path | None) -> str | None:
    """``--monitoring_config_file``: the Prometheus path, or None when Prometheus is not enabled."""
    if path is None:
        return None
    prometheus = parse_text_proto(Path(path).read_text()).get("prometheus_config") or {}
    if not prometheus.get("enable"):
        return None
    return prometheus.get("path") or DEFAULT_MONITORING_PATH


def parse_model_server_config(text: str, relative_to: Path | None = None) -> tuple[ModelConfig, ...]:
    """A text-format ``ModelServerConfig`` (``models.config``) as model configs.

    Raises:
        ValueError: on a parse error or a config the server cannot honour.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"invalid model server config: {exc}") from None
    return model_configs_from_proto(config, relative_to)


def model_configs_from_proto(config: Any, relative_to: Path | None = None) -> tuple[ModelConfig, ...]:
    """Model configs from a ``ModelServerConfig`` message (file or HandleReloadConfigRequest)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError("ModelServerConfig must contain a model_config_list")
    models = []
    for item in config.model_config_list.config:
        if not item.name:
            raise ValueError("model config without a name")
        if item.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model {item.name}: unsupported model_platform {item.model_platform!r}")
        base = Path(item.base_path)
        if not base.is_absolute() and relative_to is not None:
            base = relative_to / base
        policy = item.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = item.model_version_policy.latest.num_versions or 1
        versions = tuple(item.model_version_policy.specific.versions)
        labels = tuple(sorted(item.version_labels.items()))
        models.append(ModelConfig(item.name, base, policy, num, versions, labels))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError("duplicate model names in model server config")
    return tuple(models)


def discover_models(base: Path) -> tuple[ModelConfig, ...]:
    """Every directory under ``base`` as a model with the default policy (``latest 1``)."""
    if not base.is_dir():
        return ()
    return tuple(ModelConfig(p.name, p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith("."))


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline serve",
        description="TensorFlow Serving-compatible model server (REST and gRPC). Without model flags it serves "
                    f"the generated {GENERATED_CONFIG} of the serving base ({serving_base()}) when there is one, "
                    "else every model directory under that base.")
    flag = parser.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (0 = off)")
    flag("--rest_api_port", type=int, default=8501, help="REST port (0 = off)")
    flag("--host", default="127.0.0.1", help="address to bind both ports to")
    flag("--model_name", default=None, help="name of the model (with --model_base_path)")
    flag("--model_base_path", default=None, help="directory of numeric version subdirectories")
    flag("--model_config_file", default=None, help="text-format ModelServerConfig (models.config)")
    flag("--model_config_file_poll_wait_seconds", type=float, default=None,
         help="re-read --model_config_file this often (0 = read once; default 0, or "
              f"{GENERATED_CONFIG_POLL_S:g} for the generated serving/models.config)")
    flag("--file_system_poll_wait_seconds", type=float, default=1.0,
         help="look for new/removed versions this often (0 = once at start, <0 = never)")
    flag("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    flag("--batching_parameters_file", default=None, help="text-format BatchingParameters")
    flag("--monitoring_config_file", default=None, help="text-format MonitoringConfig (Prometheus)")
    flag("--rest_api_timeout_in_ms", type=int, default=30000)
    flag("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True, default=False)
    flag("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    flag("--rest_api_num_threads", type=int, default=max(4, 2 * (os.cpu_count() or 1)),
         help="threads running model calls for REST requests when batching is off")
    flag("--grpc_max_threads", type=int, default=max(4, 2 * (os.cpu_count() or 1)),
         help="threads handling gRPC calls (each runs its calls start to end, model call included)")
    flag("--max_request_bytes", type=int, default=64 << 20,
         help="largest accepted request body / gRPC message (413 / RESOURCE_EXHAUSTED above)")
    flag("--request_log", type=_bool, nargs="?", const=True, default=False,
         help="append sampled requests to JSONL files (docs/contracts.md)")
    flag("--request_log_sample_rate", type=float, default=1.0, help="fraction of requests logged")
    flag("--request_log_dir", default=None, help="default: PIPELINE_HOME/request_logs")
    flag("--shutdown_grace_seconds", type=float, default=10.0,
         help="how long in-flight requests may take to finish on SIGINT/SIGTERM")
    flag("--workers", type=int, default=1,
         help="server processes sharing the REST and gRPC ports, each loading every model (0 = one per core); "
              "more than one adds a supervisor that restarts them")
    return parser


def parse_args(argv: list[str]) -> ServerOptions:
    """Flags to options; reads the config files the flags name.

    Raises:
        SystemExit: on bad flags (argparse), ValueError on unusable config files.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_base_path and not args.model_name:
        args.model_name = "default"
    if bool(args.model_name) != bool(args.model_base_path) and not args.model_config_file:
        parser.error("--model_name needs --model_base_path")
    if not 0.0 <= args.request_log_sample_rate <= 1.0:
        parser.error("--request_log_sample_rate must be within [0, 1]")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    models: tuple[ModelConfig, ...] = ()
    serve_base = None
    config_file = Path(args.model_config_file).resolve() if args.model_config_file else None
    if config_file is not None:
        models = parse_model_server_config(config_file.read_text())
    elif args.model_base_path:
        models = (ModelConfig(args.model_name, Path(args.model_base_path).resolve()),)
    elif (serving_base() / GENERATED_CONFIG).is_file():
        # Written by `pipeline deploy` from the registry aliases: serve what they say, follow their changes.
        config_file = serving_base() / GENERATED_CONFIG
        models = parse_model_server_config(config_file.read_text())
        if args.model_config_file_poll_wait_seconds is None:
            args.model_config_file_poll_wait_seconds = GENERATED_CONFIG_POLL_S
    else:
        serve_base = serving_base()
        models = discover_models(serve_base)
    return ServerOptions(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        models=models,
        serve_base=serve_base,
        model_config_file=config_file,
        model_config_poll_s=args.model_config_file_poll_wait_seconds or 0.0,
        file_system_poll_s=args.file_system_poll_wait_seconds,
        batching=read_batching_parameters(args.batching_parameters_file) if args.enable_batching else None,
        monitoring_path=read_monitoring_config(args.monitoring_config_file),
        rest_timeout_s=args.rest_api_timeout_in_ms / 1000.0,
        allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
        enable_warmup=args.enable_model_warmup,
        rest_threads=max(1, args.rest_api_num_threads),
        grpc_threads=max(2, args.grpc_max_threads),
        max_request_bytes=args.max_request_bytes,
        request_log=args.request_log,
        request_log_sample_rate=args.request_log_sample_rate,
        request_log_dir=Path(args.request_log_dir).resolve() if args.request_log_dir else request_log_dir(),
        shutdown_grace_s=args.shutdown_grace_seconds,
        workers=args.workers or os.cpu_count() or 1,
    )
