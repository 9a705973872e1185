"""Names of the Airflow Assets that chain the DAGs (see docs/contracts.md).

Plain strings so that this module costs nothing to import; DAG files build ``airflow.sdk.Asset`` from them.
"""
DRIFT_ASSET_NAME = "training_data_drift"
MODEL_ASSET_NAME = "served_model"
