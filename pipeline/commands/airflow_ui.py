"""``pipeline airflow`` / ``make airflow``: the real Airflow scheduler, DAG processor, triggerer and UI on the
embedded defaults (``airflow standalone``: SQLite, the repository's dags/, state under PIPELINE_HOME).

The UI is at http://127.0.0.1:8080, bound to 127.0.0.1 and without a login page (every user is admin on
this single-user default). Ctrl-C or SIGTERM stops every process it started (exit status 130 or 143); a
second one kills them at once.
"""
from __future__ import annotations

import contextlib
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
    from pipeline.commands.stopping import Interrupted, stop_on_signals

    # Its own process group (a Ctrl-C on the terminal reaches this process only, which stops all of it), stopped
    # as a whole with every process under it: LocalExecutor workers can outlive a SIGTERM to the scheduler.
    with stop_on_signals():  # SIGINT or SIGTERM: stopped as below; a second one: SIGKILL to all of it at once
        proc = None
        try:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone", *(argv or [])],
                                    env=env, start_new_session=True)
            return proc.wait()
        except Interrupted as exc:
            print(f"pipeline airflow: {exc}: stopping Airflow (a second signal kills it at once)", file=sys.stderr,
                  flush=True)
            return exc.exit_status
        finally:
            if proc is not None:
                stop_airflow(proc)


# How long Airflow's components get to stop after SIGTERM before SIGKILL (its 15 processes took 6.7 s on a 2-core
# machine; a task still running is killed with them).
STOP_TIMEOUT_S = 10.0


def stop_airflow(proc: subprocess.Popen) -> None:
    """Stop ``airflow standalone`` and everything under it: SIGTERM to each process of its tree (a task's process
    may be in a group of its own), SIGKILL to those left after :data:`STOP_TIMEOUT_S`, then to its process group
    for what started meanwhile."""
    from pipeline.commands.stopping import stop_children

    if proc.poll() is None:
        stop_children(timeout_s=STOP_TIMEOUT_S, root=proc.pid)  # the tree is read before anything is signalled
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
