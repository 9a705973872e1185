"""Deployment: a blessed, registered version reaches the serving directory only after it has been served and
checked in a sandbox; the MLflow aliases decide what is served, and ``models.config`` is generated from them.

The steps of :func:`deploy_version`, each of which leaves the served state untouched when it fails:

1. copy the candidate into a hidden temporary directory beside the version directories (same file system) and
   add its warmup requests (``assets.extra/tf_serving_warmup_requests``) and its version number;
2. refuse a serving signature that would break the clients of the champion (unless the config allows it);
3. infra validation: serve the copy alone (our server in a sandbox on free ports, or a real TensorFlow Serving),
   wait until it is AVAILABLE, send REST and gRPC predict requests built from the test split, compare the
   answers with the evaluation stage's predictions and the p99 latency with the budget;
4. publish: one ``rename`` of the temporary directory to ``<model>/<version>``;
5. move the aliases (``champion``/``previous``, or ``challenger`` in canary mode), regenerate ``models.config``
   atomically (labels ``stable`` and ``canary``), then apply retention.

A deploy, promotion or rollback holds the model's lock for its whole course (:mod:`pipeline.deploy.lock`). A
version directory already on disk is reused (a retried deploy) only while it has the content digest recorded when
it was validated.

Layout (docs/deployment.md): ``serving/models.config`` and ``serving/<model>/<version>/``. One module per job:
``layout`` (version directories, temporary copies, publishing, digests, retention), ``models_config``,
``signatures``, ``predict`` (predict requests, warmup file, REST/gRPC helpers), ``sandbox`` (the servers a
candidate is checked on), ``validation``, ``aliases`` (moves, promotion, rollback), ``lock`` and ``stage``
(:func:`deploy_version`, :func:`run_deploy_stage`); this package re-exports their public names.
"""
from __future__ import annotations

from pipeline.contracts import MODELS_CONFIG, SIGNATURE, WARMUP_FILE
from pipeline.deploy.aliases import actor, move_aliases, new_aliases, promote, rollback
from pipeline.deploy.errors import DeployError
from pipeline.deploy.layout import (
    TMP_PREFIX, apply_retention, content_digest, copy_to_temp, models_config_path, publish, remove_dir, version_dirs,
    versions_to_remove, write_atomic,
)
from pipeline.deploy.lock import LOCK_FILE, model_lock
from pipeline.deploy.models_config import (
    CANARY, STABLE, configured_versions, render_models_config, served_versions, write_models_config,
)
from pipeline.deploy.predict import grpc_predict, predict_request, rest_predict, write_warmup_requests
from pipeline.deploy.sandbox import RemoteServer, SandboxServer, free_port, start_standby, stop_standby, wait_available
from pipeline.deploy.signatures import serving_signature, signature_breaks
from pipeline.deploy.stage import DIGEST_TAG, Candidate, candidate_from_export, deploy_version, run_deploy_stage
from pipeline.deploy.validation import ULPS, p99, validate_serving

__all__ = [
    "CANARY", "DIGEST_TAG", "LOCK_FILE", "MODELS_CONFIG", "SIGNATURE", "STABLE", "TMP_PREFIX", "ULPS", "WARMUP_FILE",
    "Candidate", "DeployError", "RemoteServer", "SandboxServer", "actor", "apply_retention", "candidate_from_export",
    "configured_versions", "content_digest", "copy_to_temp", "deploy_version", "free_port", "grpc_predict",
    "model_lock", "models_config_path", "move_aliases", "new_aliases", "p99", "predict_request", "promote",
    "publish", "remove_dir", "render_models_config", "rest_predict", "rollback", "run_deploy_stage",
    "served_versions", "serving_signature", "signature_breaks", "start_standby", "stop_standby", "validate_serving",
    "version_dirs", "versions_to_remove", "wait_available", "write_atomic", "write_models_config",
    "write_warmup_requests",
]
