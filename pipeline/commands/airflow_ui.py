"""``pipeline airflow`` / ``make airflow``: the real Airflow scheduler, DAG processor, triggerer and UI on the
embedded defaults (``airflow standalone``: SQLite, the repository's dags/, state under PIPELINE_HOME).

The UI is at http://127.0.0.1:8080, bound to 127.0.0.1 and without a login page (every user is admin on
this single-user default). Ctrl-C or SIGTERM stops every process it started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from pipeline import airflow_env

    env = airflow_env.airflow_environ()
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    env.setdefault("AIRFLOW__API__PORT", "8080")
    # A single-user laptop UI bound to 127.0.0.1: no login page. Set it to False to get Airflow's generated
    # admin password (kept in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated).
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    airflow_env.ensure_db(env)
    print(f"Airflow home: {env['AIRFLOW_HOME']}\nDAGs:         {env['AIRFLOW__CORE__DAGS_FOLDER']}\n"
          f"UI:           http://{env['AIRFLOW__API__HOST']}:{env['AIRFLOW__API__PORT']}", flush=True)
    # Its own process group, stopped as a whole: LocalExecutor workers can outlive a SIGTERM to the scheduler.
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone", *(argv or [])], env=env,
                            start_new_session=True)
    # SIGTERM to this process stops the group too (the finally below), like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
