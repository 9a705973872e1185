"""Hyperparameter tuning: an Optuna study driven by ask/tell from Airflow tasks (dags/tuning_pipeline.py).

``space`` parses and checks the ``tuning.space`` of a config and turns a trial's draw into config overrides;
``study`` opens the study in its RDB storage, asks a round of trials and tells them; ``trial`` trains one trial
on the run's split and preprocessing and scores it on the validation split; ``tasks`` holds the task bodies.

This module stays import-light: the DAG file reads its constants at parse time.
"""
from __future__ import annotations

# The tuning DAG unrolls this many rounds (a DAG's structure is fixed at parse time, the budget comes with the
# run's config): a config needing more rounds is refused at load time (pipeline.tuning.space.check_space).
MAX_ROUNDS = 10
# The most trial tasks of one round that run at once in a DAG run (max_active_tis_per_dagrun of the mapped
# trial task); tuning.trials_per_round decides how many a round has.
MAX_PARALLEL_TRIALS = 8
