"""Model lifecycle: which versions are served, loading them safely, labels, and config reloads.

- Each model's base path is polled for numeric version directories. A version is only loaded once it looks
  completely written (``saved_model.pb`` and the variables index present) *and* its files are unchanged
  between two looks, so a half-copied directory is never served; its files are compared once more after the
  load, and a load that saw them change is thrown away and retried.
- A version is loaded (and warmed up by the loader) while the old ones keep serving; the set of served
  versions of a model is one dict replaced in a single assignment, so the switch is atomic and a request
  holds on to the version it resolved. Old versions are unloaded only after that switch.
- A version that fails to load is reported (state END with the error) and is left out of the version policy,
  so it never replaces a working version; it is retried when its files change.
- Version labels are checked at config (re)load: a label must point at an AVAILABLE version unless
  ``--allow_version_labels_for_unavailable_models``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.serving.errors import Code, ServingError, from_exception
from pipeline.serving.options import ModelConfig, discover_models
from pipeline.serving.servable import Servable, fingerprint, version_ready

log = logging.getLogger("pipeline.serving")

LoadFn = Callable[[str, int, Path], Servable]
SETTLE_SECONDS = 0.05  # gap between the two looks at a directory on start-up and reloads


@dataclass(frozen=True)
class VersionStatus:
    """``ModelVersionStatus``: state name, and the status of the last transition."""

    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Model:
    config: ModelConfig
    available: dict[int, Servable] = field(default_factory=dict)  # replaced, never mutated
    labels: dict[str, int] = field(default_factory=dict)  # replaced, never mutated
    status: dict[int, VersionStatus] = field(default_factory=dict)
    seen: dict[int, tuple] = field(default_factory=dict)  # fingerprint at the previous look
    failed: dict[int, tuple] = field(default_factory=dict)  # fingerprint when its load failed


class ModelManager:
    """Owns every served model. ``resolve``/``status`` are lock-free; changes are serialised."""

    def __init__(self, models: tuple[ModelConfig, ...], load: LoadFn, *, serve_base: Path | None = None,
                 allow_unavailable_labels: bool = False, on_load: Callable[[str, bool], None] | None = None):
        self._load_fn = load
        self._serve_base = serve_base
        self._allow_unavailable_labels = allow_unavailable_labels
        self._on_load = on_load
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()
        self._initial = models
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------- requests
    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a ModelSpec asks for (``ServerCore::ServableRequestFromModelSpec``)."""
        if not name:
            raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        model = self._models.get(name)
        if label is not None:
            labels = model.labels if model is not None else {}
            if label not in labels:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            version = labels[label]
        available = model.available if model is not None else {}
        if version is not None:
            servable = available.get(version)
            if servable is None:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")
            return servable
        if not available:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return available[max(available)]

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """Known versions of a model, newest first (``GetModelStatusImpl``); labels are not consulted."""
        model = self._models.get(name)
        states = dict(model.status) if model is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(states.items(), reverse=True)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def knows(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` is a configured model (and ``version``, a decimal string, one of its known versions):
        what may label a metric."""
        model = self._models.get(name)
        if model is None:
            return False
        return version is None or (version.isdigit() and int(version) in model.status)

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self, file_system_poll_s: float, models: tuple[ModelConfig, ...] | None = None) -> None:
        """Load the initial config (or ``models`` instead), blocking, then poll in the background.

        Raises:
            ServingError: FAILED_PRECONDITION when a label points at a version that is not available.
        """
        self.apply_config(self._initial if models is None else models)
        if file_system_poll_s > 0:
            self.every("fs-poll", file_system_poll_s, self.poll)

    def watch_config_file(self, path: Path, interval_s: float, parse: Callable[[str], tuple]) -> None:
        """Re-read a models.config file every ``interval_s`` and apply it when its text changed."""
        last = {"text": path.read_text()}

        def check() -> None:
            text = path.read_text()
            if text != last["text"]:
                last["text"] = text
                self.apply_config(parse(text))
                log.info("applied %s", path)
        self.every("config-poll", interval_s, check)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._lock:
            for model in self._models.values():
                for servable in model.available.values():
                    servable.close()

    def every(self, name: str, interval_s: float, work: Callable[[], None]) -> None:
        """Run ``work`` every ``interval_s`` on a background thread until :meth:`stop` (errors are logged)."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    work()
                except Exception:  # keep polling; the error is in the log and in version status
                    log.exception("%s failed", name)
        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def apply_config(self, configs: tuple[ModelConfig, ...]) -> None:
        """Make the served models equal ``configs``: add, update, remove, load, then set labels.

        Raises:
            ServingError: FAILED_PRECONDITION for a label on an unavailable version (labels unchanged then).
        """
        with self._lock:
            models = dict(self._models)
            wanted = {config.name: config for config in configs}
            for name in list(models):
                if name not in wanted:
                    self._unload_all(models.pop(name))
            for name, config in wanted.items():
                model = models.get(name)
                if model is None:
                    models[name] = _Model(config)
                elif model.config.base_path != config.base_path:
                    self._unload_all(model)
                    models[name] = _Model(config, status=model.status)
                else:
                    model.config = config
            self._models = models
            self._poll_all(settle=True)
            for name, config in wanted.items():
                model = models[name]
                for label, version in config.labels:
                    if version not in model.available and not self._allow_unavailable_labels:
                        raise ServingError(
                            Code.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {name}, which is not "
                            f"currently available for inference")
            for name, config in wanted.items():
                models[name].labels = dict(config.labels)

    def poll(self) -> None:
        """One look at every base path (the file-system poll)."""
        with self._lock:
            if self._serve_base is not None:
                new = [c for c in discover_models(self._serve_base) if c.name not in self._models]
                if new:
                    self._models = {**self._models, **{c.name: _Model(c) for c in new}}
            self._poll_all(settle=False)

    def _poll_all(self, settle: bool) -> None:
        for model in self._models.values():
            self._poll_model(model)
        if settle:  # a second look right away, so that complete directories load without a poll's delay
            time.sleep(SETTLE_SECONDS)
            for model in self._models.values():
                self._poll_model(model)

    @staticmethod
    def _versions_on_disk(base: Path) -> dict[int, Path]:
        try:
            children = list(base.iterdir())
        except OSError:
            return {}
        return {int(p.name): p for p in children if p.name.isdigit() and p.is_dir()}

    def _poll_model(self, model: _Model) -> None:
        on_disk = self._versions_on_disk(model.config.base_path)
        loadable: set[int] = set()
        for version, path in on_disk.items():
            if version in model.available:
                loadable.add(version)
                continue
            if not version_ready(path):
                model.seen.pop(version, None)
                continue
            current = fingerprint(path)
            if model.failed.get(version) == current:
                continue  # failed before and unchanged since: not retried
            if model.seen.get(version) != current:
                model.seen[version] = current  # first look, or still being written
                continue
            loadable.add(version)
        for version in sorted(model.config.aspired(loadable) - set(model.available), reverse=True):
            self._load(model, version, on_disk[version])
        serving = model.config.aspired({v for v in loadable if v in model.available})
        for version in sorted(set(model.available) - serving):
            self._unload(model, version)

    def _load(self, model: _Model, version: int, path: Path) -> None:
        name = model.config.name
        before = model.seen.get(version)
        model.status[version] = VersionStatus("LOADING")
        started = time.monotonic()
        try:
            servable = self._load_fn(name, version, path)
        except Exception as exc:
            error = from_exception(exc)
            model.failed[version] = fingerprint(path)
            model.status[version] = VersionStatus("END", error.code.name, error.message)
            log.error("model %s version %d failed to load: %s", name, version, error.message)
            if self._on_load:
                self._on_load(name, False)
            return
        if fingerprint(path) != before:  # written to while loading: not trusted, look again next poll
            servable.close()
            model.seen.pop(version, None)
            model.status.pop(version, None)
            log.warning("model %s version %d changed while loading; will retry", name, version)
            return
        model.failed.pop(version, None)
        model.available = {**model.available, version: servable}  # the atomic switch
        model.status[version] = VersionStatus("AVAILABLE")
        log.info("model %s version %d available (%.2fs)", name, version, time.monotonic() - started)
        if self._on_load:
            self._on_load(name, True)

    def _unload(self, model: _Model, version: int) -> None:
        model.status[version] = VersionStatus("UNLOADING")
        servable = model.available.get(version)
        model.available = {v: s for v, s in model.available.items() if v != version}
        if servable is not None:
            servable.close()
        model.status[version] = VersionStatus("END")
        log.info("model %s version %d unloaded", model.config.name, version)

    def _unload_all(self, model: _Model) -> None:
        for version in sorted(model.available):
            self._unload(model, version)

