"""The production topology as real processes on one machine, without Docker: Postgres and Redis, Airflow's
api-server, scheduler, dag-processor and triggerer with the CeleryExecutor and two Celery workers, the FAB
auth manager, MLflow's tracking server behind its basic-auth app on Postgres, and ``pipeline serve`` following
the generated ``models.config`` as ``tensorflow/serving`` does in ``docker/docker-compose.yml``.

Everything binds to 127.0.0.1 on free ports and keeps its state under one throw-away directory; every process
is started in a process group of its own and stopped by that group (plus whatever it left outside it, by
process id). The one-shot steps are the compose file's own scripts (``docker/postgres-init.sh``,
``docker/init.sh``, ``docker/mlflow-server.sh``), so both run the same set-up. By hand (docs/production.md)::

    .venv/bin/python scripts/topology.py up [--root DIR] [--workers 2] [--schedules]

The tests use :class:`Topology` (tests/production/)::

    with Topology(tmp_path) as topo:
        token = topo.airflow_token()
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
VENV_BIN = Path(sys.executable).parent  # `airflow`, `mlflow`, `pipeline`, `python` of this interpreter
DAG_ID = "training_pipeline"
MODEL_NAME = "penguins"  # conf/penguins.yaml's serving name
HOST = "127.0.0.1"

AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

# Settings docker-compose.yml sets to the very same values (tests/production/test_compose.py checks it).
SHARED_ENV = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    # Stage tasks import TensorFlow: the defaults (30 s) would kill a cold start.
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    "AIRFLOW__CORE__KILLED_TASK_CLEANUP_TIME": "60",
    # Airflow's Celery settings, and the stage tasks' imports loaded once per worker (pipeline/celery_worker.py)
    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "pipeline.celery_worker.CELERY_CONFIG",
    "AIRFLOW_ADMIN_USERNAME": "admin",
    "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
    "MLFLOW_TRACKING_USERNAME": "pipeline",  # the MLflow user the tasks log as (docker/init.sh creates it)
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # MLflow's GenAI job runners: nothing here uses them
    # MLflow's usage telemetry: besides calling out, its thread unsets a variable of os.environ while a task's
    # thread iterates it (requests' proxy lookup): a task failed with KeyError '_MLFLOW_TELEMETRY_SESSION_ID'.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
# Settings both set, to values that name this machine's addresses, paths and sizes.
LOCAL_ENV_KEYS = (
    "PIPELINE_HOME", "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CELERY__WORKER_CONCURRENCY", "MLFLOW_TRACKING_URI",
    "AIRFLOW__API__BASE_URL",
)
# The keys of the secrets file: docker/init-secrets.sh writes the same ones for docker-compose.yml.
SECRET_KEYS = (
    "POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "TUNING_DB_PASSWORD", "REDIS_PASSWORD",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_TRACKING_PASSWORD",
    "PIPELINE_TUNING_STORAGE",
)
# Settings of this machine's processes only: its ports, sizes and the schedules' switch (see Topology).
LOCAL_ONLY_ENV_KEYS = (
    "AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__API__WORKERS", "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
)
# The compose file's own scripts, which the topology runs for the same steps.
POSTGRES_INIT, INIT = DOCKER / "postgres-init.sh", DOCKER / "init.sh"
MLFLOW_SERVER, MONITORING_CONFIG = DOCKER / "mlflow-server.sh", DOCKER / "monitoring.config"
# Airflow's long-running components: the compose service and the `airflow` command that is its process. The
# task logs are files in the shared PIPELINE_HOME, which the api-server reads itself: no log servers (they would
# listen on every interface).
AIRFLOW_SERVICES = {
    "airflow-apiserver": ("api-server",),
    "airflow-scheduler": ("scheduler",),
    "airflow-dag-processor": ("dag-processor",),
    "airflow-triggerer": ("triggerer", "--skip-serve-logs"),
    "airflow-worker": ("celery", "worker", "--skip-serve-logs"),
}
# How long a component may take to stop after SIGTERM (SIGINT for Postgres) before SIGKILL: a Celery worker's
# warm shutdown waits for the task it runs.
STOP_TIMEOUT_S = 20.0


def serving_flags(pipeline_home: str | Path, monitoring_config: str | Path, grpc_port: int = 8500,
                  rest_port: int = 8501) -> list[str]:
    """The model server's flags, as ``tensorflow/serving`` takes them in docker-compose.yml and ``pipeline
    serve`` here: the generated ``models.config`` of the serving directory, re-read every 5 s, each model's
    base path polled every second for versions."""
    return [f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={Path(pipeline_home) / 'serving' / 'models.config'}",
            "--model_config_file_poll_wait_seconds=5", "--file_system_poll_wait_seconds=1",
            f"--monitoring_config_file={monitoring_config}", "--rest_api_timeout_in_ms=30000"]


class TopologyError(RuntimeError):
    """A component did not start, exited, or did not become ready (the message has the end of its log)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def still_running(procs: list, timeout_s: float = 0.0) -> list:
    """Those of ``procs`` (psutil processes) that still run after up to ``timeout_s``. A zombie does not run:
    an orphan's is reaped by PID 1, which in some containers never does it."""
    import psutil

    def running(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


@dataclass
class Component:
    """One long-running process of the topology, in a process group of its own, its output in ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    user: pwd.struct_passwd | None = None  # run as this user (Postgres refuses to run as root)
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True  # False: the stop signal to the leader only (Postgres: its children obey it)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Component":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        ids = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid,
                                            "extra_groups": []}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **ids)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def exited(self) -> str | None:
        """None while it runs; else its exit status and the end of its log."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return (f"{self.name} exited with status {self.proc.returncode}; the end of {self.log}:\n"
                f"{tail(self.log)}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop its process group: the stop signal, SIGKILL after ``timeout_s``; then the processes it started
        outside the group (a task's deploy sandbox has a group of its own), by process id."""
        self.wait_stopped(self.signal_stop(), timeout_s)

    def signal_stop(self) -> list:
        """Send the stop signal (not waiting); returns its descendants as they were just before (psutil
        processes, for :meth:`wait_stopped`)."""
        import psutil

        if self.proc is None:
            return []
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self.signal_group:
                    os.killpg(self.proc.pid, self.stop_signal)
                else:
                    self.proc.send_signal(self.stop_signal)
        return descendants

    def wait_stopped(self, descendants: list, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Wait for the leader (SIGKILL to its group after ``timeout_s``), then SIGKILL the ``descendants``
        still running: group members left by a leader that exited (a pid is not reused while its group exists)
        and processes in other groups. psutil compares start times, so a reused pid is never signalled."""
        import psutil

        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"topology: {self.name} still running {timeout_s:.0f} s after "
                  f"{signal.Signals(self.stop_signal).name}: SIGKILL", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        alive = still_running(descendants, timeout_s=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                print(f"topology: {self.name} left {proc.pid} ({' '.join(proc.cmdline())[:100]}): SIGKILL",
                      file=sys.stderr, flush=True)
                proc.kill()
        still_running(alive, timeout_s=5)


def _postgres_bin(name: str) -> str:
    """``name`` (initdb, postgres) on PATH, else from the newest /usr/lib/postgresql/<major>/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise TopologyError(f"{name} not found: install PostgreSQL (`make system-packages` does, from apt)")
    return str(candidates[-1])


class Topology:
    """The topology's processes under ``root`` (created), on free ports of 127.0.0.1.

    Args:
        root: throw-away directory: ``pipeline_home/`` (PIPELINE_HOME of every component, AIRFLOW_HOME under
            it), ``postgres/`` and ``redis/`` data, ``logs/<component>.log``, ``secrets.env``, ``client.env``
            and ``airflow.netrc`` (the admin's credentials, for ``pipeline trigger`` and curl).
        workers: Celery workers (each its own process group and Celery hostname).
        schedules: False (the default here): the scheduler creates runs only when they are triggered
            (``[scheduler] use_job_schedule``), and DAGs start unpaused. Unpausing ``training_pipeline`` with
            its timetable on starts the weekly run it missed at once (Airflow runs a catchup=False DAG's
            latest interval), which would queue a triggered run behind it (``max_active_runs=1``). True: as in
            production, timetables and Asset schedules on, DAGs paused at creation.
        worker_concurrency: task slots per worker; mlflow_workers: the tracking server's uvicorn workers.
        executor: ``CeleryExecutor`` (production's) or ``LocalExecutor`` (the scheduler runs the tasks as its
            own subprocesses, no Celery workers: what benchmarks/scheduled.py compares it with).
        airflow_env: settings of Airflow's components replaced or added (benchmarks/scheduled.py turns the
            workers' preload off with one).
    """

    def __init__(self, root: str | Path, *, workers: int = 2, schedules: bool = False,
                 worker_concurrency: int = 1, mlflow_workers: int = 1, executor: str = "CeleryExecutor",
                 airflow_env: Mapping[str, str] | None = None):
        if executor not in ("CeleryExecutor", "LocalExecutor"):
            raise ValueError(f"executor {executor!r}: CeleryExecutor or LocalExecutor")
        self.executor, self.airflow_env = executor, dict(airflow_env or {})
        if executor == "LocalExecutor":
            workers = 0
        self.root = Path(root).resolve()
        self.home = self.root / "pipeline_home"
        self.logs = self.root / "logs"
        self.workers, self.schedules = workers, schedules
        self.worker_concurrency, self.mlflow_workers = worker_concurrency, mlflow_workers
        self.ports = {name: free_port() for name in ("postgres", "redis", "airflow", "mlflow", "grpc", "rest")}
        self.secrets = self._generate_secrets()
        self.components: list[Component] = []
        self._postgres_dir: Path | None = None
        self._private_postgres_dir = False

    # -- addresses and credentials ---------------------------------------------------------------------------
    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['airflow']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def serving_url(self) -> str:
        return f"http://{HOST}:{self.ports['rest']}"

    @property
    def serving_grpc_target(self) -> str:
        return f"{HOST}:{self.ports['grpc']}"

    @property
    def airflow_admin(self) -> tuple[str, str]:
        return SHARED_ENV["AIRFLOW_ADMIN_USERNAME"], self.secrets["AIRFLOW_ADMIN_PASSWORD"]

    @property
    def mlflow_admin(self) -> tuple[str, str]:
        return SHARED_ENV["MLFLOW_AUTH_ADMIN_USERNAME"], self.secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]

    def _generate_secrets(self) -> dict[str, str]:
        """The secrets file's values, generated: docker/init-secrets.sh's keys, with this host's addresses."""
        passwords = ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "TUNING_DB_PASSWORD",
                     "REDIS_PASSWORD")
        hexes = {k: secrets.token_hex(24) for k in passwords}
        pg, broker = f"{HOST}:{self.ports['postgres']}", f"{HOST}:{self.ports['redis']}"
        airflow_db, mlflow_db = hexes["AIRFLOW_DB_PASSWORD"], hexes["MLFLOW_DB_PASSWORD"]
        values = {
            **hexes,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:{airflow_db}@{pg}/airflow",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow:{airflow_db}@{pg}/airflow",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{hexes['REDIS_PASSWORD']}@{broker}/0",
            "AIRFLOW__CORE__FERNET_KEY": fernet_key(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW_ADMIN_PASSWORD": secrets.token_hex(16),
            "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://mlflow:{mlflow_db}@{pg}/mlflow",
            "MLFLOW_AUTH_DATABASE_URI": f"postgresql+psycopg2://mlflow:{mlflow_db}@{pg}/mlflow_auth",
            "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_hex(16),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
            "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16),
            "PIPELINE_TUNING_STORAGE": f"postgresql+psycopg2://tuning:{hexes['TUNING_DB_PASSWORD']}@{pg}/tuning",
        }
        assert set(values) == set(SECRET_KEYS)
        return values

    # -- environments ----------------------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """What every process of the pipeline gets: this interpreter's bin/ first on PATH (Airflow starts
        ``airflow`` by name), PIPELINE_HOME, the repository importable; nothing of the caller's Airflow,
        MLflow or pipeline settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "PIPELINE_"))}
        env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PIPELINE_HOME"] = str(self.home)
        env["TF_CPP_MIN_LOG_LEVEL"] = SHARED_ENV["TF_CPP_MIN_LOG_LEVEL"]
        return env

    def pipeline_env(self) -> dict[str, str]:
        """The environment of Airflow's components and of the one-shot set-up (the compose x-pipeline's)."""
        return {
            **self.base_env(), **SHARED_ENV, **self.secrets,
            "AIRFLOW_HOME": str(self.home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(max(4, self.workers * self.worker_concurrency)),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "AIRFLOW__API__BASE_URL": self.airflow_url,  # also the Airflow links in MLflow (pipeline.tasks)
            # this machine only
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.ports["airflow"]),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.schedules),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.schedules),
            # A task whose worker died is failed (and retried) once its heartbeats have stopped this long:
            # Airflow's 300 s would make the worker-kill test wait five minutes for nothing.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            **self.airflow_env,
        }

    def mlflow_env(self) -> dict[str, str]:
        """docker/mlflow-server.sh's environment (the compose file's mlflow service)."""
        shared = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_DISABLE_TELEMETRY",
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
        own = ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD",
               "MLFLOW_FLASK_SERVER_SECRET_KEY")
        return {
            **self.base_env(), **{k: SHARED_ENV[k] for k in shared}, **{k: self.secrets[k] for k in own},
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.home / "mlflow" / "artifacts"),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.root / "mlflow" / "basic_auth.ini"),
            "MLFLOW_HOST": HOST, "MLFLOW_PORT": str(self.ports["mlflow"]),
            "MLFLOW_WORKERS": str(self.mlflow_workers),
        }

    def admin_env(self) -> dict[str, str]:
        """A user's shell on the deployment: PIPELINE_HOME shared with the workers, MLflow as its admin (what
        ``pipeline trigger``, ``promote`` and ``rollback`` run with in the tests and benchmarks)."""
        return {**self.base_env(), "MLFLOW_TRACKING_URI": self.mlflow_url,
                "MLFLOW_TRACKING_USERNAME": self.mlflow_admin[0], "MLFLOW_TRACKING_PASSWORD": self.mlflow_admin[1]}

    def client_env(self) -> dict[str, str]:
        """What a client needs (``pipeline trigger``, the tests): the URLs and the admins' credentials."""
        return {"AIRFLOW_URL": self.airflow_url, "AIRFLOW_USERNAME": self.airflow_admin[0],
                "AIRFLOW_PASSWORD": self.airflow_admin[1], "MLFLOW_TRACKING_URI": self.mlflow_url,
                "MLFLOW_TRACKING_USERNAME": self.mlflow_admin[0],
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_admin[1], "PIPELINE_SERVING_URL": self.serving_url}

    # -- start and stop --------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 900.0) -> "Topology":
        """Start every component and wait until it is ready: the metadata database migrated, the DAG parsed,
        the scheduler, dag-processor and triggerer reporting healthy, MLflow and the model server answering.

        Raises:
            TopologyError: a step failed or a component exited (everything started is stopped first).
        """
        deadline = time.monotonic() + timeout_s
        airflow = str(VENV_BIN / "airflow")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.home.mkdir(parents=True, exist_ok=True)
            self._write_files()
            self._start_postgres(deadline)
            self._start_redis(deadline)
            self._start(Component("mlflow", ["bash", str(MLFLOW_SERVER)], self.mlflow_env(),
                                  self.logs / "mlflow.log"))
            env = self.pipeline_env()
            self._run_step("init", ["bash", str(INIT)], env, deadline)  # waits for MLflow (its user)
            api_server = [airflow, "api-server", "--host", HOST, "--port", str(self.ports["airflow"])]
            self._start(Component("airflow-apiserver", api_server, env, self.logs / "airflow-apiserver.log"))
            for service in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
                self._start(Component(service, [airflow, *AIRFLOW_SERVICES[service]], env,
                                      self.logs / f"{service}.log"))
            for i in range(1, self.workers + 1):
                self._start(Component(
                    f"airflow-worker-{i}",
                    [airflow, *AIRFLOW_SERVICES["airflow-worker"], "--celery-hostname", f"worker{i}@%h"],
                    env, self.logs / f"airflow-worker-{i}.log"))
            flags = serving_flags(self.home, MONITORING_CONFIG, self.ports["grpc"], self.ports["rest"])
            self._start(Component("serving", [str(VENV_BIN / "pipeline"), "serve", "--host", HOST, *flags],
                                  self.base_env(), self.logs / "serving.log"))
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component: the servers all at once (each waits for its own clients to end: a Celery
        worker for the task it runs), then Redis and Postgres; and remove a private Postgres directory. Safe
        to call more than once."""
        stores = [c for c in self.components if c.name in ("postgres", "redis")]
        for wave in ([c for c in self.components if c not in stores], stores[::-1]):
            pending = []
            for component in wave:
                try:
                    pending.append((component, component.signal_stop()))
                except Exception as exc:  # keep stopping the others
                    print(f"topology: stopping {component.name}: {exc}", file=sys.stderr)
            for component, descendants in pending:
                try:
                    component.wait_stopped(descendants)
                except Exception as exc:
                    print(f"topology: stopping {component.name}: {exc}", file=sys.stderr)
        self.components.clear()
        if self._private_postgres_dir and self._postgres_dir is not None:
            shutil.rmtree(self._postgres_dir, ignore_errors=True)
            self._postgres_dir = None

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def component(self, name: str) -> Component:
        """The running component called ``name`` (``airflow-worker-1``, ``postgres``...)."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component {name!r}; running: {[c.name for c in self.components]}")

    def restart(self, name: str, *, kill: bool = False, timeout_s: float = 300.0) -> Component:
        """Stop ``name`` and start it again with the same command, environment and log, as a supervisor
        (systemd, Docker's restart policy) would. ``kill``: SIGKILL its whole process group and descendants
        first, as a crashed machine or the OOM killer would (a Celery worker's running task dies with it);
        else its usual stop. Postgres keeps its data directory and is waited for until it accepts connections.
        """
        import psutil

        old = self.component(name)
        if kill:
            try:
                descendants = psutil.Process(old.pid).children(recursive=True)
            except psutil.Error:
                descendants = []
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.pid, signal.SIGKILL)
            for proc in descendants:  # those in groups of their own (a deploy sandbox)
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            old.proc.wait(timeout=30)
            still_running(descendants, timeout_s=10)
        else:
            old.stop()
        new = Component(old.name, old.argv, old.env, old.log, user=old.user, cwd=old.cwd,
                        stop_signal=old.stop_signal, signal_group=old.signal_group)
        self.components[self.components.index(old)] = new.start()
        if name == "postgres":  # the others may exit meanwhile (no database): revive() is for them
            self._wait("Postgres", self._postgres_connects, time.monotonic() + timeout_s, watch=False)
        return new

    def revive(self) -> dict[str, str]:
        """Start again every component that has exited, as the compose file's ``restart: unless-stopped``
        does; returns each one's exit and the end of its log (what a restart policy hides from its user)."""
        revived = {}
        for component in list(self.components):
            why = component.exited()
            if why:
                print(f"topology: {why}\ntopology: restarting {component.name}", file=sys.stderr, flush=True)
                revived[component.name] = why
                self.restart(component.name)
        return revived

    def check(self) -> None:
        """Raises TopologyError when a component has exited."""
        for component in self.components:
            why = component.exited()
            if why:
                raise TopologyError(why)

    # -- the steps -------------------------------------------------------------------------------------------
    def _start(self, component: Component) -> Component:
        self.components.append(component)
        return component.start()

    def _run_step(self, name: str, argv: list[str], env: dict[str, str], deadline: float) -> None:
        """A one-shot step in its own process group, its output in logs/<name>.log; the components are watched
        meanwhile."""
        step = Component(name, argv, env, self.logs / f"{name}.log").start()
        try:
            while step.proc.poll() is None:
                self.check()
                if time.monotonic() > deadline:
                    raise TopologyError(f"{name} did not finish in time; the end of {step.log}:\n"
                                        f"{tail(step.log)}")
                time.sleep(0.5)
        finally:
            step.stop()
        if step.proc.returncode != 0:
            raise TopologyError(step.exited())

    def _start_postgres(self, deadline: float) -> None:
        user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if user is None:
            self._postgres_dir = self.root / "postgres"
            self._postgres_dir.mkdir(parents=True, exist_ok=True)
        else:
            # Postgres refuses to run as root: it runs as the `postgres` user, whose data directory cannot be
            # under a root-only one (pytest's tmp dirs are): a private directory of its own, which stop()
            # removes.
            self._postgres_dir = Path(tempfile.mkdtemp(prefix="pipeline-postgres-"))
            self._private_postgres_dir = True
            os.chown(self._postgres_dir, user.pw_uid, user.pw_gid)
            (self.root / "postgres").write_text(f"the Postgres data directory is {self._postgres_dir}\n")
        data, pwfile = self._postgres_dir / "data", self._postgres_dir / "superuser.pw"
        pwfile.write_text(self.secrets["POSTGRES_PASSWORD"] + "\n")
        pwfile.chmod(0o600)
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        initdb = Component("postgres-initdb",
                           [_postgres_bin("initdb"), "-D", str(data), "-U", "postgres",
                            "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8"],
                           env, self.logs / "postgres-initdb.log", user=user, cwd=self._postgres_dir).start()
        if initdb.proc.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
            raise TopologyError(initdb.exited())
        pwfile.unlink()
        self._start(Component(
            "postgres", [_postgres_bin("postgres"), "-D", str(data), "-c", f"listen_addresses={HOST}",
                         "-c", f"port={self.ports['postgres']}",
                         "-c", "unix_socket_directories="],  # TCP only
            env, self.logs / "postgres.log", user=user, cwd=self._postgres_dir,
            stop_signal=signal.SIGINT, signal_group=False))  # SIGINT: Postgres's fast shutdown

        self._wait("Postgres", self._postgres_connects, deadline)
        self._run_step("postgres-init", ["bash", str(POSTGRES_INIT)],
                       {**self.base_env(), "PGHOST": HOST, "PGPORT": str(self.ports["postgres"]),
                        "PGPASSWORD": self.secrets["POSTGRES_PASSWORD"], "POSTGRES_USER": "postgres",
                        **{k: self.secrets[k] for k in ("AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "TUNING_DB_PASSWORD")}},
                       deadline)

    def _postgres_connects(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host=HOST, port=self.ports["postgres"], user="postgres", dbname="postgres",
                             password=self.secrets["POSTGRES_PASSWORD"], connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def _start_redis(self, deadline: float) -> None:
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"  # the password in a file of this user's, not on a command line
        conf.write_text(f"bind {HOST}\nport {self.ports['redis']}\nprotected-mode yes\ndir {data}\n"
                        f"save \"\"\nappendonly no\nrequirepass {self.secrets['REDIS_PASSWORD']}\n")
        conf.chmod(0o600)
        self._start(Component("redis", [shutil.which("redis-server") or "redis-server", str(conf)],
                              self.base_env(), self.logs / "redis.log"))

        def pongs() -> bool:
            import redis

            try:
                return bool(redis.Redis(host=HOST, port=self.ports["redis"], socket_connect_timeout=2,
                                        password=self.secrets["REDIS_PASSWORD"]).ping())
            except redis.RedisError:
                return False

        self._wait("Redis", pongs, deadline)

    def _wait_ready(self, deadline: float) -> None:
        import requests

        def answers(url: str) -> Callable[[], bool]:
            def probe() -> bool:
                try:
                    return requests.get(url, timeout=5).status_code == 200
                except requests.RequestException:
                    return False
            return probe

        self._wait("MLflow", answers(f"{self.mlflow_url}/health"), deadline)
        self._wait("the model server", answers(f"{self.serving_url}/monitoring/prometheus/metrics"), deadline)

        def healthy() -> bool:
            try:
                health = requests.get(f"{self.airflow_url}/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError):
                return False
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

        self._wait("Airflow's scheduler, dag-processor and triggerer", healthy, deadline)
        headers = {"Authorization": f"Bearer {self.airflow_token()}"}

        def parsed() -> bool:
            api = f"{self.airflow_url}/api/v2"
            errors = requests.get(f"{api}/importErrors", headers=headers, timeout=10).json()
            if errors.get("total_entries"):
                raise TopologyError(f"the DAG files do not import: {errors['import_errors']}")
            return requests.get(f"{api}/dags/{DAG_ID}", headers=headers, timeout=10).status_code == 200

        self._wait(f"the DAG {DAG_ID}", parsed, deadline)

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float, watch: bool = True) -> None:
        while not ready():
            if watch:
                self.check()
            if time.monotonic() > deadline:
                raise TopologyError(f"{what} not ready in time; logs under {self.logs}")
            time.sleep(0.5)

    def _write_files(self) -> None:
        """secrets.env (the secrets file's format), client.env and airflow.netrc (the admin's credentials),
        all readable by this user only."""
        user, password = self.airflow_admin
        files = {
            "secrets.env": "".join(f"{k}={v}\n" for k, v in self.secrets.items()),
            "client.env": "".join(f"{k}={v}\n" for k, v in self.client_env().items()),
            "airflow.netrc": f"machine {HOST} login {user} password {password}\n",
        }
        for name, text in files.items():
            path = self.root / name
            path.touch(mode=0o600, exist_ok=True)
            path.chmod(0o600)
            path.write_text(text)

    # -- clients ---------------------------------------------------------------------------------------------
    def airflow_token(self) -> str:
        """A JWT for Airflow's REST API, from ``POST /auth/token`` with the admin's credentials."""
        import requests

        user, password = self.airflow_admin
        response = requests.post(f"{self.airflow_url}/auth/token", timeout=30,
                                 json={"username": user, "password": password})
        if response.status_code >= 300:
            raise TopologyError(f"POST /auth/token: {response.status_code} {response.text[:500]}")
        return response.json()["access_token"]


def _up(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="pipeline-topology-"))
    topo = Topology(root, workers=args.workers, schedules=args.schedules)

    def interrupt(signum: int, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)  # while starting, as SIGINT: start() stops what it had started
    print(f"starting the topology under {topo.root} (logs: {topo.logs}) ...", flush=True)
    try:
        topo.start()
    except TopologyError as exc:
        print(f"topology: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"topology: interrupted ({exc}) while starting; stopped", file=sys.stderr)
        return 130
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    secrets_file, models_config = topo.root / "secrets.env", topo.home / "serving" / "models.config"
    print(f"""
Airflow     {topo.airflow_url}   (user {topo.airflow_admin[0]}; AIRFLOW_ADMIN_PASSWORD in {secrets_file})
MLflow      {topo.mlflow_url}   (user {topo.mlflow_admin[0]}; MLFLOW_AUTH_ADMIN_PASSWORD there)
serving     {topo.serving_url} (REST), {topo.serving_grpc_target} (gRPC), following {models_config}
PIPELINE_HOME {topo.home}

  set -a; . {topo.root / 'client.env'}; set +a
  .venv/bin/pipeline trigger --epochs 5   # or: --airflow URL --netrc {topo.root / 'airflow.netrc'}
  curl -s $PIPELINE_SERVING_URL/v1/models/{MODEL_NAME}/labels/stable

Ctrl-C stops everything (the directory stays: remove it when done).""", flush=True)
    code = 0
    try:
        while not stop.wait(2.0):
            try:
                topo.check()
            except TopologyError as exc:
                print(f"topology: {exc}\nstopping everything", file=sys.stderr)
                code = 1
                break
    finally:
        topo.stop()
    print("stopped", flush=True)
    return code


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/topology.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything, wait for Ctrl-C or SIGTERM, stop everything")
    up.add_argument("--root", help="directory for all state and logs (default: a new temporary directory)")
    up.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    up.add_argument("--schedules", action="store_true",
                    help="timetables and Asset schedules on, DAGs paused at creation (as in production)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
