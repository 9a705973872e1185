"""Lineage of a served version: the registry entry, the MLflow and Airflow runs that produced it, the data
snapshot it was trained on, its evaluation metrics, and who or what moved an alias onto it.

Read from the model version's tags (written by register and deploy), its lineage file
(``assets.extra/pipeline_metadata.json``, docs/contracts.md) and the stage runs of its MLflow parent run.
"""
from __future__ import annotations

from typing import Any

from pipeline import paths


def lineage(model_name: str, version: int | None = None) -> dict[str, Any]:
    """Everything known about ``version`` (default: the champion) of ``model_name``.

    Raises:
        DeployError: no such version, or no champion when ``version`` is not given.
    """
    from mlflow.exceptions import MlflowException

    from pipeline import registry
    from pipeline.deploy import DeployError, models_config_path
    from pipeline.export import read_metadata
    from pipeline.tracking import TAG_PARENT, TAG_STAGE

    c = registry.client()
    try:
        all_aliases = c.get_registered_model(model_name).aliases
    except MlflowException:
        raise DeployError(f"no registered model named {model_name!r}") from None
    if version is None:
        if "champion" not in all_aliases:
            raise DeployError(f"{model_name} has no champion; name a version")
        version = int(all_aliases["champion"])
    try:
        mv = c.get_model_version(model_name, str(version))
    except MlflowException:
        raise DeployError(f"{model_name} has no registered version {version}") from None
    version_dir = paths.serving_dir(model_name) / str(version)
    meta = read_metadata(version_dir) if (version_dir / "assets.extra").is_dir() else {}
    parent = mv.tags.get("mlflow_parent_run_id")
    stages: dict[str, Any] = {}
    if parent:
        run = c.get_run(parent)
        for child in c.search_runs([run.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'"):
            stages[child.data.tags.get(TAG_STAGE, "")] = child
    evaluate = stages.get("evaluate")
    metrics = meta.get("metrics") or (dict(evaluate.data.metrics) if evaluate else {})
    config = models_config_path()
    return {
        "model_name": model_name,
        "version": int(version),
        "aliases": sorted(a for a, v in all_aliases.items() if int(v) == int(version)),
        "on_disk": str(version_dir) if version_dir.is_dir() else None,
        "in_models_config": config.is_file() and f"versions: {version}\n" in config.read_text(),
        "blessed": mv.tags.get("blessed") == "true",
        "mlflow": {"model_version": f"models:/{model_name}/{version}", "model_source": mv.source,
                   "run_id": mv.run_id, "parent_run_id": parent,
                   "deploy_run_id": mv.tags.get("deploy.run_id"),
                   "stage_runs": {stage: r.info.run_id for stage, r in sorted(stages.items())}},
        "airflow": {"dag_id": mv.tags.get("airflow.dag_id") or meta.get("dag_id"),
                    "dag_run_id": mv.tags.get("airflow.run_id") or meta.get("dag_run_id")},
        "dataset": {"digest": mv.tags.get("dataset_digest") or (meta.get("dataset") or {}).get("digest"),
                    **{k: v for k, v in (meta.get("dataset") or {}).items() if k != "digest"}},
        "metrics": metrics,
        "promotions": registry.version_events(model_name, version),
    }


def format_lineage(info: dict[str, Any]) -> str:
    """``pipeline lineage``'s text."""
    ml, af, data = info["mlflow"], info["airflow"], info["dataset"]
    lines = [
        f"Model:            {info['model_name']} version {info['version']}"
        f" ({', '.join(info['aliases']) or 'no alias'}; {'blessed' if info['blessed'] else 'not blessed'})",
        f"On disk:          {info['on_disk'] or 'no'}{' (in models.config)' if info['in_models_config'] else ''}",
        f"MLflow version:   {ml['model_version']} (source {ml['model_source']})",
        f"MLflow run:       {ml['parent_run_id'] or '-'} (model logged by run {ml['run_id'] or '-'};"
        f" deploy run {ml['deploy_run_id'] or '-'})",
        f"DAG run:          {af['dag_id'] or '-'} / {af['dag_run_id'] or '-'}",
        f"Dataset:          {data.get('snapshot') or '-'} ({data.get('rows', '?')} rows)",
        f"Dataset digest:   {data.get('digest') or '-'}",
        f"Source:           {data.get('source') or '-'}",
        "Metrics:          " + (", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                          for k, v in sorted(info["metrics"].items())) or "-"),
        "Promotions:",
    ]
    lines += [f"  {e.get('at', '?')}  {e.get('action', '?'):<9} -> {e.get('alias', '?'):<10} by {e.get('by', '?')}"
              f"{'  (' + e['reason'] + ')' if e.get('reason') else ''}" for e in info["promotions"]] or ["  none"]
    return "\n".join(lines)
