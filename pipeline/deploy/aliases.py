"""The MLflow aliases that decide what is served: moving them (with ``models.config`` and retention), canary
promotion and rollback, each recorded on the model version with who did it and why (a line appended to its
description: ``pipeline.registry.record_event``)."""
from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime, timezone
from typing import Any, Mapping

from pipeline import paths
from pipeline.config import DeployConfig
from pipeline.deploy.errors import DeployError
from pipeline.deploy.layout import apply_retention, version_dirs
from pipeline.deploy.lock import model_lock
from pipeline.deploy.models_config import write_models_config


def actor() -> str:
    """Who is acting: the Airflow run when inside a task, else the user and host of the command."""
    run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if run:
        return f"airflow:{os.environ.get('AIRFLOW_CTX_DAG_ID', '')}/{run}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_aliases(current: Mapping[str, int], version: int, canary: bool) -> dict[str, int | None]:
    """The served aliases after deploying ``version``: the champion with the former one as ``previous``, or
    (canary) the ``challenger``, replacing an earlier challenger."""
    if canary:
        return {**current, "challenger": version}
    out: dict[str, int | None] = {**current, "champion": version, "challenger": None}
    if current.get("champion") not in (None, version):
        out["previous"] = current["champion"]
    if current.get("challenger") == version:
        out["challenger"] = None
    return out


def move_aliases(model_name: str, target: Mapping[str, int | None], *, action: str, reason: str,
                 by: str | None = None, keep_versions: int | None = None) -> dict[str, Any]:
    """Point the served aliases at ``target``, regenerate ``models.config`` and apply retention.

    ``models.config`` is written first from the aliases-to-be (it only ever names versions on disk); the
    registry follows; should that fail, the file is regenerated from the registry as it is.
    """
    from pipeline import registry

    by = by or actor()
    with model_lock(model_name):  # one deploy, promotion or rollback of a model at a time
        current = registry.served_aliases(model_name)
        after = {a: v for a, v in {**current, **target}.items() if v is not None}
        model_dir = paths.serving_dir(model_name)
        missing = {a: v for a, v in after.items() if a != "previous" and v not in version_dirs(model_dir)}
        if missing:
            raise DeployError(f"cannot point {', '.join(f'{a}→v{v}' for a, v in missing.items())}: "
                              f"not in {model_dir}")
        config = write_models_config(model_name, after)
        try:
            registry.set_aliases(model_name, {a: target[a] for a in target})
        except Exception:
            write_models_config(model_name, registry.served_aliases(model_name))
            raise
        moved = {a: v for a, v in after.items() if current.get(a) != v}
        for alias, version in moved.items():
            registry.record_event(model_name, version, {"action": action, "alias": alias, "by": by, "at": _now(),
                                                        "reason": reason})
        removed = apply_retention(model_name, keep_versions, after) if keep_versions else []
        return {"aliases": after, "moved": moved, "models_config": str(config), "removed_versions": removed}


def promote(model_name: str, cfg: DeployConfig, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Canary → stable: the challenger becomes champion, the champion previous.

    Raises:
        DeployError: there is no challenger.
    """
    from pipeline import registry

    with model_lock(model_name):  # one deploy, promotion or rollback of a model at a time
        current = registry.served_aliases(model_name)
        challenger = current.get("challenger")
        if challenger is None:
            raise DeployError(f"{model_name} has no challenger to promote (deploy with deploy.canary: true first)")
        target = {"champion": challenger, "challenger": None}
        if current.get("champion") not in (None, challenger):
            target["previous"] = current["champion"]
        return move_aliases(model_name, target, action="promote", reason=reason or "canary promoted to stable",
                            by=by, keep_versions=cfg.keep_versions)


def rollback(model_name: str, cfg: DeployConfig, to: int | None = None, reason: str = "",
             by: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to ``to`` (default: ``previous``); the version rolled back from becomes
    ``previous``, so it stays loaded and the label switch is a single step for a running server.

    Raises:
        DeployError: nothing to roll back to, the target was never blessed, or it is no longer on disk.
    """
    from pipeline import registry

    with model_lock(model_name):  # one deploy, promotion or rollback of a model at a time
        current = registry.served_aliases(model_name)
        champion = current.get("champion")
        target = to if to is not None else current.get("previous")
        if target is None:
            raise DeployError(f"{model_name} has no previous version to roll back to (use --to VERSION)")
        if target == champion:
            raise DeployError(f"version {target} of {model_name} is the champion already")
        mv = registry.client().get_model_version(model_name, str(target))
        if mv.tags.get("blessed") != "true":
            raise DeployError(f"version {target} of {model_name} was never blessed; it cannot become the champion")
        if target not in version_dirs(paths.serving_dir(model_name)):
            raise DeployError(f"version {target} of {model_name} is not on disk (removed by retention?); "
                              f"deploy it again with `pipeline deploy --version {target}`")
        aliases = {"champion": target, "previous": champion}
        if current.get("challenger") == target:
            aliases["challenger"] = None
        return move_aliases(model_name, aliases, action="rollback",
                            reason=reason or f"rolled back from version {champion}", by=by, keep_versions=None)

