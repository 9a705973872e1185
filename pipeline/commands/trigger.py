"""``pipeline trigger``: run ``training_pipeline`` on a running Airflow over its REST API, and follow it.

It signs in (``POST /auth/token``) with credentials from the environment (``AIRFLOW_USERNAME`` and
``AIRFLOW_PASSWORD``) or a netrc-style file (``--netrc``, ``$NETRC``, ``~/.netrc``: the Airflow host's entry),
triggers a run with the params given (``POST /api/v2/dags/{dag_id}/dagRuns``; Airflow checks them against the
DAG's Params), prints each task's state as it changes and the run's MLflow run once the first task has made
it, and ends with the summary ``pipeline train`` prints. Exit status: 0 when the DAG run succeeded, 1 when it
failed, 2 when nothing was triggered (no credentials, sign-in refused, unknown or paused DAG, params refused,
Airflow unreachable), 130 or 143 when SIGINT or SIGTERM stopped it (the DAG run is then marked failed, as
``pipeline train`` ends its own).

Paths in ``--config`` and ``--source`` are made absolute here and read by the Airflow workers: they must see
them at that path (one machine, as with ``scripts/topology.py``, or a shared mount, as in ``docker/``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO
from urllib.parse import quote, urlsplit

from pipeline.names import model_name_flag

DAG_ID = "training_pipeline"
DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"
FINISHED = {"success", "failed"}
WAITING = {None, "none", "scheduled", "queued", "deferred"}  # task states not worth a line: not started yet


class TriggerError(Exception):
    """Nothing could be triggered, or Airflow refused a request (``status``: the HTTP status it answered)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM while following the run (a KeyboardInterrupt: no ``except Exception`` takes it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline trigger", description=__doc__.splitlines()[0])
    p.add_argument("--airflow", default=os.environ.get("AIRFLOW_URL") or DEFAULT_AIRFLOW_URL,
                   help=f"Airflow's URL (default $AIRFLOW_URL, else {DEFAULT_AIRFLOW_URL})")
    p.add_argument("--dag", default=DAG_ID, help=f"the DAG to run (default {DAG_ID})")
    p.add_argument("--config", help="YAML pipeline config as the workers see it (default conf/penguins.yaml)")
    p.add_argument("--source", help="CSV or Parquet file to train on, as the workers see it")
    p.add_argument("--label", help="label column of --source")
    p.add_argument("--model-name", type=model_name_flag, help="name of the registered and served model")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--max-minutes", type=float, help="time budget of the fit (training.max_minutes)")
    p.add_argument("--conf", default="{}", help="extra DAG run params as a JSON object")
    p.add_argument("--netrc", help="netrc-style file with the Airflow host's login and password (default "
                                   "$NETRC, else ~/.netrc; AIRFLOW_USERNAME/AIRFLOW_PASSWORD come first)")
    p.add_argument("--unpause", action="store_true",
                   help="unpause a paused DAG first (its runs wait while it is paused; its timetable starts)")
    p.add_argument("--no-follow", action="store_true", help="trigger, print the run id and exit 0")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often the run is read (default 2)")
    args = p.parse_args(argv)
    if args.source and not args.config and not args.label:
        p.error("--source without --config needs --label (the column to predict)")
    if args.poll_seconds <= 0:
        p.error("--poll-seconds must be > 0")
    return args


def run_conf(args: argparse.Namespace) -> dict[str, Any]:
    """The DAG run's params: ``--conf`` with the flags on top, paths absolute (as in ``pipeline train``).

    Raises:
        TriggerError: ``--conf`` is not a JSON object.
    """
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        raise TriggerError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise TriggerError("--conf must be a JSON object")
    source = args.source
    values = {"config": str(Path(args.config).resolve()) if args.config else "",
              "source": str(Path(source).resolve()) if source and "://" not in source else source,
              "label": args.label, "model_name": args.model_name, "epochs": args.epochs,
              "max_minutes": args.max_minutes}
    conf.update({k: v for k, v in values.items() if v not in (None, "") or k == "config"})
    return conf


def credentials(url: str, netrc_file: str | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The Airflow user and password: ``AIRFLOW_USERNAME``/``AIRFLOW_PASSWORD``, else the netrc entry of the
    URL's host (``netrc_file``, ``$NETRC`` or ``~/.netrc``; a ``default`` entry counts).

    Raises:
        TriggerError: neither gives credentials for that host (or the netrc file is unreadable).
    """
    import netrc

    environ = os.environ if environ is None else environ
    if environ.get("AIRFLOW_USERNAME") and environ.get("AIRFLOW_PASSWORD"):
        return environ["AIRFLOW_USERNAME"], environ["AIRFLOW_PASSWORD"]
    host = urlsplit(url).hostname or ""
    path = Path(netrc_file or environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if path.is_file():
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError) as exc:
            raise TriggerError(f"cannot read {path}: {exc}") from None
        if entry and entry[0] and entry[2]:
            return entry[0], entry[2]
    elif netrc_file:
        raise TriggerError(f"--netrc {netrc_file}: no such file")
    raise TriggerError(f"no Airflow credentials for {host}: set AIRFLOW_USERNAME and AIRFLOW_PASSWORD, or "
                       f"give a netrc file with 'machine {host} login USER password PASSWORD' (--netrc, "
                       f"$NETRC, ~/.netrc)")


class _Bearer:
    """``requests`` auth sending the token: an auth object, so that requests does not replace the header by a
    netrc entry's basic credentials."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail[:1000] if isinstance(detail, str) else json.dumps(detail)[:1000]


class AirflowClient:
    """The calls of Airflow 3's REST API (``/api/v2``) this command makes, signed in with a JWT from ``POST
    /auth/token`` (fetched again once when a call answers 401: tokens expire)."""

    def __init__(self, url: str, username: str, password: str, timeout_s: float = 30.0):
        import requests

        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._login = {"username": username, "password": password}
        self.session = requests.Session()
        self._auth: _Bearer | None = None

    def sign_in(self) -> None:
        """Raises TriggerError: Airflow unreachable, or the credentials refused."""
        import requests

        try:
            response = self.session.post(f"{self.url}/auth/token", json=self._login, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TriggerError(f"Airflow at {self.url} is not reachable: {exc}") from None
        if response.status_code >= 300:
            raise TriggerError(f"signing in to {self.url} as {self._login['username']} failed: "
                               f"{response.status_code} {_detail(response)}", response.status_code)
        self._auth = _Bearer(response.json()["access_token"])

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method`` on ``/api/v2{path}``; the decoded JSON answer.

        Raises:
            TriggerError: no answer, or one of 400 or more.
        """
        import requests

        if self._auth is None:
            self.sign_in()
        for attempt in range(2):
            try:
                response = self.session.request(method, f"{self.url}/api/v2{path}", auth=self._auth,
                                                timeout=self.timeout_s, **kwargs)
            except requests.RequestException as exc:
                raise TriggerError(f"{method} {path}: {exc}") from None
            if response.status_code == 401 and attempt == 0:
                self.sign_in()
                continue
            if response.status_code >= 400:
                raise TriggerError(f"{method} {path}: {response.status_code} {_detail(response)}",
                                   response.status_code)
            return response.json() if response.content else None

    @staticmethod
    def dag_path(dag_id: str) -> str:
        return f"/dags/{quote(dag_id, safe='')}"

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"{self.dag_path(dag_id)}/dagRuns/{quote(run_id, safe='')}"

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (None when it has none)."""
        try:
            entry = self.call("GET", f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}"
                                     f"/xcomEntries/return_value")
        except TriggerError as exc:
            if exc.status == 404:
                return None
            raise
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, str):  # a JSON string, as some XCom backends store it
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_error(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str | None:
        """The last error a task's attempt logged (its exception), from its structured log; None if none."""
        try:
            path = f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}"
            log = self.call("GET", path, params={"full_content": "true"},
                            headers={"Accept": "application/json"})
        except TriggerError:
            return None
        return last_error(log.get("content") if isinstance(log, dict) else None)


def last_error(events: Any) -> str | None:
    """The last error of a structured task log (Airflow 3's ``content`` list of events): the exception's type
    and message when one is attached (the innermost of a chain), else the error event's text."""
    if not isinstance(events, list):
        return None
    for event in reversed(events):
        if not isinstance(event, dict) or event.get("level") not in ("error", "critical"):
            continue
        for detail in reversed(event.get("error_detail") or []):
            if isinstance(detail, dict) and detail.get("exc_type"):
                return f"{detail['exc_type']}: {detail.get('exc_value', '')}".strip().rstrip(":")
        text = str(event.get("event") or "").strip()
        if text and not text.startswith(("WARNING: All log messages", "I0000", "E0000", "W0000")):
            return text  # TensorFlow's native logging goes to stderr, which Airflow logs as errors: skipped
    return None


def _mlflow_get(path: str, params: Mapping[str, str],
                environ: Mapping[str, str] | None = None) -> dict | None:
    """``GET`` on the MLflow server of ``$MLFLOW_TRACKING_URI`` (an http(s) URI; basic-auth credentials from
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``): the JSON answer, None without one."""
    import requests

    environ = os.environ if environ is None else environ
    uri = (environ.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        response = requests.get(f"{uri}{path}", params=params, timeout=15,
                                auth=(user, password) if user and password else None)
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def mlflow_run_link(run_id: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The MLflow UI's address of ``run_id`` (on :func:`_mlflow_get`'s server); None when unknown."""
    found = _mlflow_get("/api/2.0/mlflow/runs/get", {"run_id": run_id}, environ) or {}
    experiment = (found.get("run") or {}).get("info", {}).get("experiment_id")
    uri = ((os.environ if environ is None else environ).get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    return f"{uri}/#/experiments/{experiment}/runs/{run_id}" if experiment else None


def mlflow_alias(model_name: str, alias: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The version ``alias`` names in the registry (on :func:`_mlflow_get`'s server); None when unknown."""
    found = _mlflow_get("/api/2.0/mlflow/registered-models/alias", {"name": model_name, "alias": alias},
                        environ)
    return ((found or {}).get("model_version") or {}).get("version")


class TaskPrinter:
    """One line per task state change (with the error of a failed attempt), and the MLflow run once a task's
    return value names it."""

    def __init__(self, out: TextIO, mlflow_link: Callable[[str], str | None] = mlflow_run_link):
        self.out, self.mlflow_link = out, mlflow_link
        self.states: dict[str, tuple[str, int]] = {}
        self.parent_run_id: str | None = None

    def update(self, client: AirflowClient, dag_id: str, run_id: str, instances: list[dict]) -> None:
        for ti in sorted(instances, key=lambda t: (t.get("start_date") or "~", t["task_id"])):
            state, tries = ti.get("state"), int(ti.get("try_number") or 0)
            if state in WAITING or self.states.get(ti["task_id"]) == (state, tries):
                continue
            self.states[ti["task_id"]] = (state, tries)
            line = f"  {ti['task_id']:<12} {state}" + (f" (try {tries})" if tries > 1 else "")
            if state in ("success", "failed", "up_for_retry") and ti.get("duration") is not None:
                line += f"  {float(ti['duration']):.1f} s"
            if state in ("failed", "up_for_retry"):
                error = client.task_error(dag_id, run_id, ti["task_id"], max(tries, 1))
                if error:
                    line += f"\n      {error}"
            print(line, file=self.out, flush=True)
            if state == "success" and self.parent_run_id is None:
                value = client.xcom(dag_id, run_id, ti["task_id"])
                if isinstance(value, dict) and value.get("parent_run_id"):
                    self.parent_run_id = value["parent_run_id"]
                    link = self.mlflow_link(self.parent_run_id)
                    print(f"MLflow run:       {self.parent_run_id}{f' ({link})' if link else ''}",
                          file=self.out, flush=True)

    def failed(self) -> list[str]:
        return sorted(t for t, (state, _) in self.states.items() if state in ("failed", "upstream_failed"))


def trigger(client: AirflowClient, dag_id: str, conf: dict, unpause: bool, out: TextIO) -> dict:
    """Check the DAG (known; unpaused, or unpaused now with ``unpause``) and trigger a run with ``conf``.

    Raises:
        TriggerError: unknown DAG, paused DAG without ``unpause``, params refused.
    """
    try:
        dag = client.call("GET", client.dag_path(dag_id))
    except TriggerError as exc:
        if exc.status == 404:
            raise TriggerError(f"Airflow at {client.url} has no DAG {dag_id!r} (not parsed yet, or another "
                               f"name)") from None
        raise
    if dag.get("is_paused"):
        if not unpause:
            raise TriggerError(f"DAG {dag_id} is paused: its runs would wait until it is unpaused (--unpause "
                               f"unpauses it first; its timetable then starts too)")
        client.call("PATCH", client.dag_path(dag_id), json={"is_paused": False})
        print(f"pipeline trigger: unpaused DAG {dag_id}", file=out, flush=True)
    run = client.call("POST", f"{client.dag_path(dag_id)}/dagRuns", json={"logical_date": None, "conf": conf})
    print(f"pipeline trigger: DAG {dag_id} run {run['dag_run_id']} on {client.url} with params "
          f"{json.dumps(conf)}", file=out, flush=True)
    return run


def follow(client: AirflowClient, dag_id: str, run_id: str, printer: TaskPrinter, poll_s: float,
           max_errors: int = 30) -> dict:
    """Poll the DAG run until it is finished, printing its tasks' changes; returns the finished run. Errors
    reading it are retried (a restarting api-server), ``max_errors`` in a row at most."""
    errors = 0
    while True:
        try:
            run = client.call("GET", client.run_path(dag_id, run_id))
            instances = client.call("GET", f"{client.run_path(dag_id, run_id)}/taskInstances",
                                    params={"limit": 1000}).get("task_instances", [])
            printer.update(client, dag_id, run_id, instances)
            errors = 0
        except TriggerError as exc:
            errors += 1
            if errors >= max_errors:
                raise
            print(f"pipeline trigger: {exc} (retrying)", file=sys.stderr, flush=True)
            time.sleep(poll_s)
            continue
        if run.get("state") in FINISHED:
            return run
        time.sleep(poll_s)


def report(client: AirflowClient, dag_id: str, run: dict, printer: TaskPrinter, out: TextIO,
           interrupted: Stopped | None = None) -> int:
    """The summary ``pipeline train`` prints, from the tasks' return values; 0 when the run succeeded."""
    run_id = run["dag_run_id"]
    values = {t: client.xcom(dag_id, run_id, t) or {} for t in ("ingest", "register", "deploy")}
    reg, dep = values["register"], values["deploy"]
    how = f", interrupted by {signal.Signals(interrupted.signum).name}" if interrupted else ""
    parent = reg.get("parent_run_id") or values["ingest"].get("parent_run_id") or printer.parent_run_id
    lines = ["", f"DAG run:          {run_id} ({run.get('state')}{how})",
             f"MLflow run:       {parent or '-'}"]
    if reg:
        lines += [f"Registered model: {reg['model_name']} version {reg['version']}",
                  f"Blessed:          {'yes' if reg.get('blessed') else 'no'}"]
        if dep.get("deployed"):
            lines.append(f"Deployed:         {dep.get('published')} (label {dep.get('label')})")
        elif dep:
            lines.append(f"Deployed:         no ({dep.get('reason')})")
        aliases = dep.get("aliases") or {"champion": mlflow_alias(reg["model_name"], "champion") or "-"}
        canary = f"; canary: version {aliases['challenger']}" if aliases.get("challenger") else ""
        lines.append(f"Champion:         version {aliases.get('champion', '-')}{canary}")
    if printer.failed():
        lines.append(f"Failed tasks:     {', '.join(printer.failed())}")
    print("\n".join(lines), file=out, flush=True)
    return 0 if run.get("state") == "success" else 1


def _raise_stopped(signum: int, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second signal ends the command at once
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Stopped(signum)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """``pipeline trigger``: 0 success, 1 the run failed, 2 nothing triggered, 130/143 interrupted."""
    out = out or sys.stdout
    args = parse_args(list(argv or []))
    try:
        conf = run_conf(args)
        client = AirflowClient(args.airflow, *credentials(args.airflow, args.netrc))
        client.sign_in()
        run = trigger(client, args.dag, conf, args.unpause, out)
    except TriggerError as exc:
        print(f"pipeline trigger: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.no_follow:
        return 0
    printer, run_path = TaskPrinter(out), client.run_path(args.dag, run["dag_run_id"])
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _raise_stopped)
    try:
        finished = follow(client, args.dag, run["dag_run_id"], printer, args.poll_seconds)
        return report(client, args.dag, finished, printer, out)
    except Stopped as stop:  # (a second signal, during the clean-up below, ends the command at once)
        name = signal.Signals(stop.signum).name
        try:  # ended failed, as pipeline train ends its run: Airflow stops the task that runs
            client.call("PATCH", run_path, json={"state": "failed", "note": f"interrupted by {name} "
                                                                           f"(pipeline trigger)"})
            ended = "the DAG run ended failed"
            report(client, args.dag, client.call("GET", run_path), printer, out, stop)
        except TriggerError as exc:
            ended = f"the DAG run could not be ended ({exc})"
        print(f"Interrupted:      by {name}; {ended}", file=out, flush=True)
        return 128 + stop.signum
    except TriggerError as exc:
        print(f"pipeline trigger: lost the run {run['dag_run_id']}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
