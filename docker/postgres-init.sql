-- The MLflow tracking server gets its own database and role next to Airflow's.
CREATE ROLE mlflow LOGIN PASSWORD 'airflow';
CREATE DATABASE mlflow OWNER mlflow;
