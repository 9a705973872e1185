#!/usr/bin/env bash
# The MLflow tracking server used in production (docker/docker-compose.yml) and runnable by hand.
# Backend store: $MLFLOW_BACKEND_STORE_URI (Postgres in production; default: the embedded SQLite store).
# Artifacts: served by the tracking server itself from $MLFLOW_ARTIFACTS_DESTINATION (a local path or s3://, gs://).
set -euo pipefail
home="${PIPELINE_HOME:-$(cd "$(dirname "$0")/.." && pwd)/.pipeline}"
mkdir -p "$home/mlflow"
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$home/mlflow/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$home/mlflow/artifacts}" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}"
