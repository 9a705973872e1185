#!/usr/bin/env bash
# The MLflow tracking server of the production topology, behind MLflow's basic-auth app: runs, models and users on
# Postgres, artifacts served by the server itself. docker-compose.yml's mlflow service and scripts/topology.py run
# it; everything comes from the environment (the secrets file, docker/init-secrets.sh):
#   MLFLOW_BACKEND_STORE_URI       tracking and registry store (postgresql+psycopg2://mlflow:...@host/mlflow)
#   MLFLOW_AUTH_DATABASE_URI       the auth app's users and permissions (.../mlflow_auth)
#   MLFLOW_AUTH_ADMIN_PASSWORD     the auth app's admin (MLFLOW_AUTH_ADMIN_USERNAME, default admin), created on the
#                                  first start; later changed only through the auth API
#   MLFLOW_FLASK_SERVER_SECRET_KEY the auth app's CSRF key (the same in every replica)
#   MLFLOW_ARTIFACTS_DESTINATION   where the server keeps artifacts (a path, s3://, gs://)
#   MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS, MLFLOW_AUTH_CACHE_TTL_SECONDS, MLFLOW_AUTH_CONFIG_PATH (where the
#   auth app's ini is written)
# mlflow/server.sh is the same server without authentication, for the embedded defaults.
set -euo pipefail
: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_DATABASE_URI:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}" "${MLFLOW_ARTIFACTS_DESTINATION:?}"
# The auth app reads its database from an ini file only: written here, readable by this user alone.
umask 077
export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-$(mktemp -d)/basic_auth.ini}"
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A password check costs a key derivation: without the cache every request of a task pays it (a model's
# artifacts are dozens of requests). A changed or removed password may keep working this long on other workers.
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
exec mlflow server --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
