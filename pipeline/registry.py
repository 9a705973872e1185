"""The MLflow model registry as the pipeline uses it: versions, the ``champion`` alias, and where a
registered version's SavedModel is on disk."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import paths
from pipeline.tracking import client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
SERVED_ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
EVENTS_TAG = "deploy.events"  # JSON list of what moved an alias onto this version, by whom, when, why
MAX_EVENTS = 20


def version_by_alias(model_name: str, alias: str) -> "ModelVersion | None":
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def saved_model_dir(model_name: str, version: int | str) -> Path | None:
    """The SavedModel of a registered version: its serving directory, or (when that is gone) the copy in the
    MLflow artifact store, downloaded to a cache."""
    local = paths.serving_dir(model_name) / str(version)
    if (local / "saved_model.pb").exists():
        return local
    import mlflow

    mv = client().get_model_version(model_name, str(version))
    dst = paths.pipeline_home() / "cache" / "models" / model_name / str(version)
    if not (dst / "saved_model" / "saved_model.pb").exists():
        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(f"{mv.source.rstrip('/')}/artifacts/saved_model", dst_path=str(dst))
    return dst / "saved_model" if (dst / "saved_model" / "saved_model.pb").exists() else None


def champion_dir(model_name: str) -> tuple[int, Path] | None:
    mv = version_by_alias(model_name, CHAMPION)
    if mv is None:
        return None
    path = saved_model_dir(model_name, mv.version)
    return (int(mv.version), path) if path is not None else None


def served_aliases(model_name: str) -> dict[str, int]:
    """The aliases that decide what is served (``champion``, ``previous``, ``challenger``) and their versions."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client().get_registered_model(model_name).aliases
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in aliases.items() if alias in SERVED_ALIASES}


def set_aliases(model_name: str, aliases: dict[str, int | None]) -> None:
    """Point each alias at its version, or delete it (``None``)."""
    from mlflow.exceptions import MlflowException

    c = client()
    for alias, version in aliases.items():
        if version is None:
            try:
                c.delete_registered_model_alias(model_name, alias)
            except MlflowException:
                pass  # already absent
        else:
            c.set_registered_model_alias(model_name, alias, str(version))


def record_event(model_name: str, version: int | str, event: dict) -> None:
    """Append ``event`` (action, alias, by, at, reason...) to the version's ``deploy.events`` tag."""
    import json

    c = client()
    mv = c.get_model_version(model_name, str(version))
    events = json.loads(mv.tags.get(EVENTS_TAG) or "[]")
    events = (events + [event])[-MAX_EVENTS:]
    text = json.dumps(events)
    while len(text) > 5000 and len(events) > 1:  # MLflow's tag value limit
        events = events[1:]
        text = json.dumps(events)
    c.set_model_version_tag(model_name, str(version), EVENTS_TAG, text)


def version_events(model_name: str, version: int | str) -> list[dict]:
    import json

    return json.loads(client().get_model_version(model_name, str(version)).tags.get(EVENTS_TAG) or "[]")
