"""The tuning studies' storage on the production topology: the `tuning` role and database that
docker/postgres-init.sh creates, reached with PIPELINE_TUNING_STORAGE from the secrets file, as the workers get
it; an Optuna study there asks, tells and is found again by a second client (a trial task on another worker)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.production]

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "examples" / "penguins_tuning.yaml"


def test_optuna_studies_live_in_the_topologys_postgres(topo, monkeypatch):
    import optuna

    from pipeline.config import load_config
    from pipeline.tuning import study as studies

    url = topo.secrets["PIPELINE_TUNING_STORAGE"]
    assert url.startswith("postgresql+psycopg2://tuning:") and url.endswith("/tuning")
    monkeypatch.setenv(studies.STORAGE_ENV, url)
    cfg = load_config(str(CONFIG))
    assert studies.storage_url(cfg.tuning) == url
    first = studies.open_study(cfg, "production_test_run", "accuracy")
    asked = studies.ask_round(first, cfg.tuning, 1)
    assert asked
    again = studies.open_study(cfg, "production_test_run", "accuracy")  # another process would do the same
    assert studies.ask_round(again, cfg.tuning, 1) == asked  # a retried suggest asks nothing more
    again.tell(asked[0], 0.5)
    stored = optuna.load_study(study_name=first.study_name, storage=url)
    assert stored.trials[asked[0]].state == optuna.trial.TrialState.COMPLETE

