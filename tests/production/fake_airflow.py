"""A stand-in for the endpoints of Airflow 3's REST API (and one of MLflow's) that ``pipeline trigger`` calls,
answering as the real ones do (shapes taken from Airflow 3.3's api-server): sign-in, a DAG, a run whose tasks
move through a scripted sequence of states, return values, structured task logs. Records every request."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "deploy")


def success_script() -> list[dict[str, str]]:
    """Each poll a task more done, ending with the run's success."""
    steps = []
    for i, task in enumerate(STAGES):
        done = {t: "success" for t in STAGES[:i]}
        steps.append({**done, task: "running"})
    steps.append({t: "success" for t in STAGES})
    return steps


@dataclass
class FakeAirflow:
    username: str = "admin"
    password: str = "secret"
    dag_id: str = "training_pipeline"
    paused: bool = False
    script: list[dict[str, str]] = field(default_factory=success_script)
    final_state: str = "success"  # the run's state once the script is played
    xcoms: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, list[dict]] = field(default_factory=dict)
    hold: bool = False  # True: the run stays at the script's first step until it is PATCHed
    expire_token_after: int | None = None  # API calls after which the current token is refused once
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    run_state: str | None = None
    polls: int = 0
    tokens: int = 0
    calls_with_token: int = 0
    conf: dict | None = None

    def start(self) -> "FakeAirflow":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null") if length else None

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body() if method in ("POST", "PATCH") else None
                fake.requests.append((method, self.path, body))
                status, answer = fake.answer(method, self.path, body, self.headers.get("Authorization"))
                self._send(status, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def calls(self, method: str, pattern: str) -> list[Any]:
        """The bodies of the requests of ``method`` whose path matches ``pattern``."""
        return [b for m, p, b in self.requests if m == method and re.search(pattern, p)]

    # -- the API ---------------------------------------------------------------------------------------------
    def answer(self, method: str, path: str, body: Any, auth: str | None) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        if path.startswith("/api/2.0/mlflow/runs/get"):
            return 200, {"run": {"info": {"experiment_id": "7", "run_id": "run123"}}}
        if path == "/auth/token" and method == "POST":
            if body == {"username": self.username, "password": self.password}:
                self.tokens += 1
                self.calls_with_token = 0
                return 201, {"access_token": f"token-{self.tokens}"}
            return 401, {"detail": "Invalid credentials"}
        if not path.startswith("/api/v2/"):
            return 404, {"detail": "Not Found"}
        if auth != f"Bearer token-{self.tokens}" or self.tokens == 0:
            return 401, {"detail": "Not authenticated"}
        self.calls_with_token += 1
        if self.expire_token_after is not None and self.calls_with_token > self.expire_token_after:
            self.expire_token_after = None
            return 401, {"detail": "Token expired"}
        dag = f"/api/v2/dags/{self.dag_id}"
        run = f"{dag}/dagRuns/{self.run_id.replace(':', '%3A').replace('+', '%2B')}"
        if not path.startswith(dag):
            return 404, {"detail": "The Dag with ID: `other` was not found"}
        if path == dag and method == "GET":
            return 200, {"dag_id": self.dag_id, "is_paused": self.paused}
        if path == dag and method == "PATCH":
            self.paused = bool(body.get("is_paused"))
            return 200, {"dag_id": self.dag_id, "is_paused": self.paused}
        if path == f"{dag}/dagRuns" and method == "POST":
            conf = body.get("conf") or {}
            if isinstance(conf.get("epochs"), int) and conf["epochs"] < 1:
                return 400, {"detail": "Invalid input for param epochs: 0 is less than the minimum of 1"}
            self.conf, self.run_state = conf, "queued"
            return 200, self._run()
        if path == run and method == "GET":
            return 200, self._run()
        if path == run and method == "PATCH":
            self.run_state = body["state"]
            self.hold = False
            return 200, self._run()
        if path == f"{run}/taskInstances":
            return 200, self._task_instances()
        match = re.fullmatch(rf"{re.escape(run)}/taskInstances/(\w+)/xcomEntries/return_value", path)
        if match:
            if match.group(1) not in self.xcoms:
                return 404, {"detail": "XCom entry with key: `return_value` not found"}
            task = match.group(1)
            return 200, {"key": "return_value", "task_id": task, "value": self.xcoms[task]}
        match = re.fullmatch(rf"{re.escape(run)}/taskInstances/(\w+)/logs/(\d+)", path)
        if match:
            return 200, {"content": self.logs.get(match.group(1), []), "continuation_token": None}
        return 404, {"detail": "Not Found"}

    def _states(self) -> dict[str, str]:
        if self.run_state in ("failed", "success") and self.polls >= len(self.script):
            return self.script[-1] if self.script else {}
        step = 0 if self.hold else min(self.polls, len(self.script) - 1)
        return self.script[step]

    def _task_instances(self) -> dict:
        states = self._states()
        if not self.hold:
            self.polls += 1
            if self.polls >= len(self.script) and self.run_state not in ("failed", "success"):
                self.run_state = self.final_state
        else:
            self.run_state = "running"
        instances = [{"task_id": t, "state": states.get(t), "try_number": 1 if states.get(t) else 0,
                      "start_date": f"2026-01-01T00:00:0{i}Z" if states.get(t) else None,
                      "duration": 1.5 if states.get(t) in ("success", "failed") else None}
                     for i, t in enumerate(STAGES)]
        return {"task_instances": instances, "total_entries": len(instances)}

    def _run(self) -> dict:
        return {"dag_run_id": self.run_id, "dag_id": self.dag_id, "state": self.run_state, "conf": self.conf,
                "run_type": "manual", "logical_date": None}
