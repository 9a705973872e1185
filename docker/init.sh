#!/usr/bin/env bash
# One-shot set-up before Airflow's components start: docker-compose.yml's airflow-init service, and
# scripts/topology.py. Idempotent: every step leaves what exists as it is.
#   1. the metadata database migrated (Airflow's tables and those of the FAB auth manager);
#   2. the Airflow admin user ($AIRFLOW_ADMIN_USERNAME, default admin), created once;
#   3. the MLflow user the tasks log as ($MLFLOW_TRACKING_USERNAME), created once by the auth app's admin;
#   4. an empty models.config in the serving directory, which the deploy task regenerates: tensorflow/serving
#      refuses to start on a missing --model_config_file.
set -euo pipefail
: "${PIPELINE_HOME:?}" "${AIRFLOW_ADMIN_PASSWORD:?}" "${MLFLOW_TRACKING_URI:?}" "${MLFLOW_TRACKING_USERNAME:?}"
: "${MLFLOW_TRACKING_PASSWORD:?}" "${MLFLOW_AUTH_ADMIN_PASSWORD:?}"

airflow db migrate
# The password is on this one short-lived command line, as in Airflow's own compose file.
airflow users create --role Admin --username "${AIRFLOW_ADMIN_USERNAME:-admin}" --password "$AIRFLOW_ADMIN_PASSWORD" \
  --firstname Pipeline --lastname Admin --email "${AIRFLOW_ADMIN_EMAIL:-admin@example.com}"

python - <<'PY'
import os

import requests

uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
user = os.environ["MLFLOW_TRACKING_USERNAME"]
admin = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin", os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
response = requests.post(f"{uri}/api/2.0/mlflow/users/create", auth=admin, timeout=60,
                         json={"username": user, "password": os.environ["MLFLOW_TRACKING_PASSWORD"]})
if response.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in response.text:
    raise SystemExit(f"init.sh: creating the MLflow user {user} failed: {response.status_code} {response.text[:500]}")
print(f"MLflow user {user}: {'created' if response.status_code == 200 else 'exists'}")
PY

serving="$PIPELINE_HOME/serving"
mkdir -p "$serving"
if [ ! -e "$serving/models.config" ]; then
  printf '# Empty until the first deploy generates it (pipeline.deploy).\nmodel_config_list {\n}\n' > "$serving/models.config"
fi
