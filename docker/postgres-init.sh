#!/usr/bin/env bash
# Airflow's, MLflow's and the tuning studies' (Optuna's RDB storage) databases and roles next to the superuser's, with the passwords of the secrets file
# (docker/init-secrets.sh). The postgres image runs it once, on an empty data directory
# (/docker-entrypoint-initdb.d); scripts/topology.py runs it too, with PGHOST/PGPORT/PGPASSWORD set.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?set by the secrets file}" "${MLFLOW_DB_PASSWORD:?set by the secrets file}" \
  "${TUNING_DB_PASSWORD:?set by the secrets file}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
     -v tuning_password="$TUNING_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
-- the users and permissions of MLflow's basic-auth app
CREATE DATABASE mlflow_auth OWNER mlflow;
-- the Optuna studies of tuning_pipeline (PIPELINE_TUNING_STORAGE)
CREATE ROLE tuning LOGIN PASSWORD :'tuning_password';
CREATE DATABASE tuning OWNER tuning;
SQL
