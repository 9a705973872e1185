"""Keras/TensorFlow training-and-serving pipeline: one module per stage.

Kept import-light on purpose: the Airflow DAG processor imports `dags/`, which may import names from here,
so nothing heavy (TensorFlow, pandas, MLflow) is imported at package level.
"""
