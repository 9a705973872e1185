"""The deploy step: a blessed candidate copied, checked and published (:func:`deploy_version`), and the stage
around it with its MLflow run (:func:`run_deploy_stage`)."""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline import paths
from pipeline.config import DeployConfig
from pipeline.deploy.aliases import actor, move_aliases, new_aliases
from pipeline.deploy.errors import DeployError
from pipeline.deploy.layout import content_digest, copy_to_temp, publish, remove_dir, version_dirs
from pipeline.deploy.lock import model_lock
from pipeline.deploy.models_config import CANARY, STABLE, configured_versions
from pipeline.deploy.predict import write_warmup_requests
from pipeline.deploy.signatures import serving_signature, signature_breaks
from pipeline.deploy.validation import validate_serving

DIGEST_TAG = "deploy.digest"  # model version tag: sha256 of the version directory as validated (layout.content_digest)

@dataclass(frozen=True)
class Candidate:
    """A registered, blessed version ready to deploy, with the evaluation's inputs and answers to check it on."""

    model_name: str
    version: int
    source: Path  # a verified SavedModel (the export's staging copy or the registry's artifact)
    inputs: Mapping[str, Any]  # the test split as signature inputs
    expected: Any  # the evaluation stage's predictions on those rows
    metadata: Mapping[str, Any] = field(default_factory=dict)


def candidate_from_export(model_name: str, version: int, source: str | Path,
                          max_rows: int = 10_000) -> Candidate:
    """The candidate of a SavedModel written by the export stage: its lineage file names the test split and
    the DAG run whose evaluation predictions (``runs/<run>/evaluate/predictions.npy``) it must reproduce.

    The served model is checked on a uniform sample of ``max_rows`` of the scored test rows
    (``deploy.check_rows``; 0: all of them) with their predictions: the test split is read record batch by record batch, so a test
    split of millions of rows is never in memory, nor sent through the sandbox whole.

    Raises:
        DeployError: the lineage file, the test split or the predictions are missing, or do not match.
    """
    import numpy as np
    import pandas as pd

    from pipeline.datasets import as_whole_read, iter_frames, whole_read_dtypes
    from pipeline.export import read_metadata
    from pipeline.features import FeatureSpec
    from pipeline.preprocess import feature_arrays, label_strings

    source = Path(source)
    try:
        meta = read_metadata(source)
        test_path = meta["test_split"]
        expected = np.load(paths.run_dir(meta["dag_run_id"]) / "evaluate" / "predictions.npy")
        spec = FeatureSpec(tuple(meta["features"]["numeric"]), tuple(meta["features"]["categorical"]),
                           meta["label"], meta["task"])
        n = len(expected)
        picked = None
        if max_rows and n > max_rows:  # positions among the scored rows, drawn before the read
            picked = np.sort(np.random.default_rng(version).choice(n, size=max_rows, replace=False))
        known = {str(c) for c in meta.get("class_names") or []}
        dtypes = whole_read_dtypes(test_path)  # each batch typed as the evaluation's read typed it
        parts, scored = [], 0
        for frame in iter_frames(test_path, [*spec.numeric, *spec.categorical, spec.label]):
            frame = as_whole_read(frame, dtypes)
            if spec.task == "classification":  # the evaluation scores only classes seen in training
                frame = frame[[v in known for v in label_strings(frame[spec.label])]]
            if picked is None:
                parts.append(frame)
            else:
                lo, hi = np.searchsorted(picked, [scored, scored + len(frame)])
                parts.append(frame.iloc[picked[lo:hi] - scored])
            scored += len(frame)
    except (OSError, KeyError, ValueError) as exc:
        raise DeployError(f"cannot find what version {version} was evaluated on ({type(exc).__name__}: {exc}); "
                          f"infra validation needs its test split and the evaluation's predictions") from exc
    if not parts:
        raise DeployError(f"the test split {test_path} has no rows to check version {version} on")
    if scored != n:
        raise DeployError(f"the test split has {scored} scored rows but the evaluation saved {n} predictions")
    test = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    return Candidate(model_name, int(version), source, feature_arrays(test, spec),
                     expected if picked is None else expected[picked], meta)


def _distrust(model_name: str, version: int, target: Path) -> str | None:
    """Why the version directory on disk is not the one validated (None: it is, byte for byte).

    The digest of what the checks passed is the model version's ``deploy.digest`` tag, set before the rename
    that published it; anything changed, added or removed since then changes the directory's digest."""
    from pipeline import registry

    recorded = registry.client().get_model_version(model_name, str(version)).tags.get(DIGEST_TAG)
    if not recorded:
        return f"no digest of a validated copy was recorded for it (tag {DIGEST_TAG})"
    found = content_digest(target)
    if found != recorded:
        return (f"its content digest is sha256 {found}, not the {recorded} of the copy that was validated: "
                f"it changed after it was published")
    return None


def _served(model_name: str, version: int) -> list[str]:
    """What serves ``version``: its aliases, and ``models.config`` when it names it."""
    from pipeline import registry

    config = paths.models_config_path()
    served = [a for a, v in registry.served_aliases(model_name).items() if v == version]
    if version in configured_versions(config.read_text() if config.is_file() else None, model_name):
        served.append(str(config))
    return served


def deploy_version(candidate: Candidate, cfg: DeployConfig, *, blessed: bool, reason: str = "",
                   by: str | None = None) -> dict[str, Any]:
    """Validate ``candidate`` and publish it, then move the aliases (see the package docstring); under the
    model's deploy lock (:func:`~pipeline.deploy.lock.model_lock`), so deploys, promotions and rollbacks of one
    model never interleave.

    Idempotent: a version already published by a deployment (a retried task) is not validated or copied again
    when its directory still has the content digest recorded when it was validated; the aliases and
    ``models.config`` are brought in line. A directory that does not match is never trusted: it is replaced by
    a freshly validated copy, or, while something serves it, the deploy is refused.

    Returns:
        The report: the checks' measurements, ``published`` (path), ``digest``, ``aliases``, ``moved``,
        ``removed_versions``.
    Raises:
        DeployError: not blessed, unreadable, a breaking signature, a failed check, an unwritable directory, a
            served version directory that is not what was validated.
    """
    name, version = candidate.model_name, candidate.version
    if not blessed:
        raise DeployError(f"{name} version {version} is not blessed by the evaluation gate; only blessed versions deploy")
    with model_lock(name):
        return _deploy_locked(candidate, cfg, reason=reason, by=by)


def _deploy_locked(candidate: Candidate, cfg: DeployConfig, *, reason: str, by: str | None) -> dict[str, Any]:
    from pipeline import registry
    from pipeline.export import METADATA_FILE

    name, version = candidate.model_name, candidate.version
    model_dir = paths.serving_dir(name)
    target = model_dir / str(version)
    report: dict[str, Any] = {"model_name": name, "version": version}
    untrusted = None
    if target.exists():
        if version not in version_dirs(model_dir):
            raise DeployError(f"{target} exists but is not a complete SavedModel; remove it and deploy again")
        untrusted = _distrust(name, version, target)
        if untrusted is None:
            report["published"] = str(target)
            report["already_published"] = True
        elif served := _served(name, version):
            raise DeployError(f"{target} is not trusted: {untrusted}. It is served ({', '.join(served)}), so it is "
                              f"not replaced under a running server: move the aliases off it (`pipeline rollback`), "
                              f"remove the directory and deploy version {version} again", report)
        else:
            report["revalidated"] = untrusted  # replaced below by a copy that passes the checks, or left alone
    if not report.get("already_published"):
        tmp = copy_to_temp(candidate.source, model_dir, version)
        try:
            meta_file = tmp / "assets.extra" / METADATA_FILE
            if meta_file.is_file():
                meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "version": version}, indent=2))
            write_warmup_requests(tmp, name, candidate.inputs, cfg.warmup_rows)
            signature = serving_signature(tmp)
            champion = registry.served_aliases(name).get("champion")
            if champion is not None and champion != version:
                champion_dir = registry.saved_model_dir(name, champion)
                breaks = signature_breaks(serving_signature(champion_dir), signature) if champion_dir else []
                report["signature_changes"] = breaks
                if breaks and not cfg.allow_signature_change:
                    raise DeployError(f"the serving signature of version {version} would break clients of the champion "
                                      f"(version {champion}): {'; '.join(breaks)} (set deploy.allow_signature_change "
                                      f"to deploy it anyway)", report)
            report.update(validate_serving(tmp, name, version, candidate.inputs, candidate.expected, cfg))
            report["digest"] = content_digest(tmp)
            registry.client().set_model_version_tag(name, str(version), DIGEST_TAG, report["digest"])
            if untrusted is not None:
                remove_dir(target)  # unserved and not what was validated: the checked copy takes its place
            report["published"] = str(publish(tmp, model_dir, version))
        except DeployError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DeployError(str(exc), {**report, **exc.report}) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    canary = cfg.canary and cfg.promotion_rule == "manual"
    current = registry.served_aliases(name)
    already = current.get("challenger" if canary else "champion") == version
    try:
        moved = move_aliases(name, {} if already else new_aliases(current, version, canary),
                             action="deploy", reason=reason, by=by, keep_versions=cfg.keep_versions)
    except BaseException:
        if not report.get("already_published") and not already:  # unpublish: the aliases never moved
            remove_dir(target)
            report.pop("published", None)
        raise
    report.update(moved)
    report["label"] = CANARY if canary else STABLE
    return report


# ------------------------------------------------------------------------------------ with MLflow
@contextlib.contextmanager
def _deploy_run(parent_run_id: str, model_name: str, version: int, own_run: bool) -> Iterator[Any]:
    """The MLflow run a deploy records itself in: the DAG run's nested ``deploy`` run, or (``own_run``) a new
    run in the same experiment that only names the training run (tag ``deploy.source_run_id``)."""
    import mlflow

    from pipeline import tracking

    if not own_run:
        with tracking.stage_run(parent_run_id, "deploy") as run:
            yield run
        return
    c = tracking.client()
    created = c.create_run(c.get_run(parent_run_id).info.experiment_id, run_name=f"deploy {model_name} v{version}",
                           tags={tracking.TAG_STAGE: "deploy", "pipeline.kind": "deploy",
                                 "deploy.source_run_id": parent_run_id})
    with mlflow.start_run(run_id=created.info.run_id) as run:  # ends FAILED when the block raises
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("pipeline.error", f"{type(exc).__name__}: {exc}"[:5000])
            raise


def run_deploy_stage(cfg: DeployConfig, parent_run_id: str, model_name: str, version: int,
                     source: str | Path | None, *, blessed: bool, reason: str, by: str | None = None,
                     own_run: bool = False) -> dict[str, Any]:
    """The deploy stage inside its MLflow run: settings and outcome as tags, the checks' measurements as metrics
    and ``deploy_report.json``; a failure's reason is the run's ``pipeline.error`` tag.

    Args:
        parent_run_id: the MLflow run of the DAG run that trained and registered the version.
        own_run: False (the DAG's deploy task): the parent's nested run ``deploy`` (the same run again on a
            retry), and the parent run is finished here, the last stage. True (``pipeline deploy --version N``):
            a run of its own in the same experiment; the training run, its status and its tags are left alone.
    Raises:
        DeployError: the deployment failed (after recording why).
    """
    import mlflow

    from pipeline import registry, tracking

    with _deploy_run(parent_run_id, model_name, version, own_run) as run:
        mlflow.set_tags({"model_version": str(version), "deploy.canary": str(cfg.canary).lower(),
                         "deploy.promotion_rule": cfg.promotion_rule, "deploy.by": by or actor()})
        if not blessed:
            mlflow.set_tags({"deployed": "false", "deploy.reason": "not blessed by the evaluation gate"})
            result = {"model_name": model_name, "version": version, "deployed": False,
                      "reason": "not blessed by the evaluation gate"}
        else:
            try:
                if source is None:
                    raise DeployError(f"no SavedModel of {model_name} version {version} on disk or in MLflow")
                candidate = candidate_from_export(model_name, version, source, cfg.check_rows)
                report = deploy_version(candidate, cfg, blessed=True, reason=reason, by=by)
            except DeployError as exc:
                _log_report(exc.report)
                mlflow.set_tag("deployed", "false")
                raise
            _log_report(report)
            mlflow.set_tags({"deployed": "true", "deploy.label": report["label"]})
            registry.client().set_model_version_tag(model_name, str(version), "deploy.run_id", run.info.run_id)
            result = {"model_name": model_name, "version": version, "deployed": True,
                      "published": report["published"], "label": report["label"], "aliases": report["aliases"],
                      "removed_versions": report["removed_versions"]}
    if not own_run:
        tracking.finish_parent(parent_run_id)
    return result


def _log_report(report: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in report.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "version"})
    mlflow.log_dict(dict(report), "deploy_report.json")
