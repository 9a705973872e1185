"""``pipeline deploy | promote | rollback | lineage``: deployment from the command line (docs/deployment.md).

    pipeline deploy --version N [--config FILE] [--model-name NAME]   validate and publish a blessed version
    pipeline promote [--config FILE] [--model-name NAME] [--reason R]  canary (challenger) -> stable (champion)
    pipeline rollback [--to VERSION] [--reason R] ...                 champion back to previous (or VERSION)
    pipeline lineage [VERSION] [--json] ...                            where a served version comes from

The MLflow registry aliases are the truth; each command moves them and regenerates ``serving/models.config``,
which a server started with ``--model_config_file`` picks up within its poll interval. Exit status 0 on
success, 1 when the deployment was refused or failed (the reason is printed), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from pipeline.names import model_name_flag


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"pipeline {prog}", description=description)
    p.add_argument("--config", help="YAML pipeline config: its model name and deploy section (default conf/penguins.yaml)")
    p.add_argument("--model-name", type=model_name_flag, help="the registered and served model (default: the config's)")
    return p


def _config(args: argparse.Namespace):
    from pipeline.config import load_config

    cfg = load_config(args.config)
    return cfg, args.model_name or cfg.serving.model_name


def _run(action: Callable[[], dict[str, Any]], describe: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    from pipeline.config import ConfigError
    from pipeline.deploy import DeployError

    try:
        result = action()
    except (DeployError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str) if as_json else describe(result))
    return 0


def _aliases_line(result: dict[str, Any]) -> str:
    aliases = result.get("aliases") or {}
    line = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items()))
    removed = result.get("removed_versions")
    return f"Aliases:          {line or '-'}\nmodels.config:    {result.get('models_config', '-')}" + (
        f"\nRemoved (retention): {', '.join(map(str, removed))}" if removed else "")


def deploy_main(argv: list[str] | None = None) -> int:
    p = _parser("deploy", "Validate a blessed registered version in a sandbox server and publish it.")
    p.add_argument("--version", type=int, required=True, help="the registered version to deploy")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def action() -> dict[str, Any]:
        from pipeline import deploy, registry

        cfg, name = _config(args)
        from mlflow.exceptions import MlflowException

        try:
            mv = registry.client().get_model_version(name, str(args.version))
        except MlflowException:
            raise deploy.DeployError(f"{name} has no registered version {args.version}") from None
        parent = mv.tags.get("mlflow_parent_run_id")
        if not parent:
            raise deploy.DeployError(f"{name} version {args.version} was not registered by the training pipeline")
        result = deploy.run_deploy_stage(cfg.deploy, parent, name, args.version,
                                         registry.saved_model_dir(name, args.version),
                                         blessed=mv.tags.get("blessed") == "true",
                                         reason=f"pipeline deploy --version {args.version}", own_run=True)
        if not result["deployed"]:
            raise deploy.DeployError(f"{name} version {args.version} is not blessed; only blessed versions deploy")
        return result

    return _run(action, lambda r: f"Deployed:         {r['model_name']} version {r['version']} -> {r['published']} "
                                  f"(label {r['label']})\n{_aliases_line(r)}", args.json)


def promote_main(argv: list[str] | None = None) -> int:
    p = _parser("promote", "Promote the canary (alias challenger) to stable (alias champion).")
    p.add_argument("--reason", default="", help="recorded with the promotion")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def action() -> dict[str, Any]:
        from pipeline import deploy

        cfg, name = _config(args)
        return deploy.promote(name, cfg.deploy, reason=args.reason)

    return _run(action, lambda r: f"Promoted:         champion is version {r['aliases']['champion']}\n{_aliases_line(r)}",
                args.json)


def rollback_main(argv: list[str] | None = None) -> int:
    p = _parser("rollback", "Move the champion back to the previous version (or --to VERSION).")
    p.add_argument("--to", type=int, help="the version to serve as champion (default: the alias previous)")
    p.add_argument("--reason", default="", help="recorded with the rollback")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def action() -> dict[str, Any]:
        from pipeline import deploy

        cfg, name = _config(args)
        return deploy.rollback(name, cfg.deploy, to=args.to, reason=args.reason)

    return _run(action, lambda r: f"Rolled back:      champion is version {r['aliases']['champion']}\n{_aliases_line(r)}",
                args.json)


def lineage_main(argv: list[str] | None = None) -> int:
    p = _parser("lineage", "Where a served version comes from: registry, runs, data, metrics, promotions.")
    p.add_argument("version", nargs="?", type=int, help="default: the champion")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def action() -> dict[str, Any]:
        from pipeline import lineage

        _, name = _config(args)
        return lineage.lineage(name, args.version)

    def describe(r: dict[str, Any]) -> str:
        from pipeline import lineage

        return lineage.format_lineage(r)

    return _run(action, describe, args.json)
