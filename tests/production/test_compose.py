"""docker/docker-compose.yml against the topology the production test runs as processes
(scripts/topology.py): the same services and commands, the same settings, secrets only from the generated env
file, the serving directory mounted as a directory with the generated models.config, and only the UI and
serving ports published, on 127.0.0.1 unless configured. No Docker engine is needed: the file is parsed and
interpolated as compose does."""
from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
import topology
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
PIPELINE_HOME = "/srv/pipeline"
AIRFLOW = set(topology.AIRFLOW_SERVICES) | {"airflow-init"}


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``$$`` (a literal ``$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", one, value)


def services(env: dict[str, str] | None = None) -> dict[str, dict]:
    parsed = yaml.safe_load(COMPOSE.read_text())  # resolves the file's <<: merge keys
    return interpolate(parsed, {"PIPELINE_HOME": PIPELINE_HOME, **(env or {})})["services"]


@pytest.fixture(scope="module")
def compose() -> dict[str, dict]:
    return services()


@pytest.fixture(scope="module")
def topo_env(tmp_path_factory) -> dict[str, str]:
    """The environment the topology gives Airflow's components, less what it takes over from this process."""
    topo = topology.Topology(tmp_path_factory.mktemp("env"))
    inherited = set(topo.base_env()) - {"PIPELINE_HOME", "TF_CPP_MIN_LOG_LEVEL"}
    return {k: v for k, v in topo.pipeline_env().items() if k not in inherited}


def test_the_services_are_the_topologys_components(compose):
    assert set(compose) == {"postgres", "redis", "mlflow", "airflow-init", *topology.AIRFLOW_SERVICES,
                            "tensorflow-serving"}
    for name, subcommand in topology.AIRFLOW_SERVICES.items():
        assert compose[name]["command"][: 1 + len(subcommand)] == ["airflow", *subcommand], name
    assert compose["airflow-worker"]["deploy"]["replicas"] == topology.Topology(ROOT / "unused").workers == 2
    # the one-shot steps and the MLflow server are the scripts the topology runs
    assert compose["airflow-init"]["command"] == ["bash", f"/opt/pipeline/docker/{topology.INIT.name}"]
    assert compose["mlflow"]["command"] == ["bash", f"/opt/pipeline/docker/{topology.MLFLOW_SERVER.name}"]
    init_sql = f"./{topology.POSTGRES_INIT.name}:/docker-entrypoint-initdb.d/10-pipeline.sh:ro"
    assert init_sql in compose["postgres"]["volumes"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for script in (topology.INIT, topology.MLFLOW_SERVER):
        assert re.search(rf"^COPY .*docker/{script.name}.* \./docker/$", dockerfile, re.M), script.name
    assert "requirements-prod.txt" in dockerfile


def test_airflow_services_have_the_topologys_settings(compose, topo_env):
    for name in AIRFLOW:
        env = compose[name]["environment"]
        for key, value in topology.SHARED_ENV.items():
            assert env.get(key) == value, (name, key)
        for key in topology.LOCAL_ENV_KEYS:
            assert key in env, (name, key)
        # every setting of the topology's processes is in the compose file, the secrets file, or is local only
        missing = set(topo_env) - set(env) - set(topology.SECRET_KEYS) - set(topology.LOCAL_ONLY_ENV_KEYS)
        assert not missing, (name, missing)
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == topology.AUTH_MANAGER
        assert env["PIPELINE_HOME"] == PIPELINE_HOME and env["AIRFLOW_HOME"] == f"{PIPELINE_HOME}/airflow"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert f"{PIPELINE_HOME}:{PIPELINE_HOME}" in compose[name]["volumes"]
    assert topo_env["AIRFLOW__CORE__AUTH_MANAGER"] == topology.AUTH_MANAGER


def test_secrets_come_only_from_the_generated_env_file(compose):
    for name, service in compose.items():
        if name == "tensorflow-serving":
            assert "env_file" not in service
            continue
        assert service["env_file"] == ["secrets.env"], name
        leaked = set(service.get("environment") or {}) & set(topology.SECRET_KEYS)
        assert not leaked, (name, leaked)
    text = COMPOSE.read_text()
    assert not re.findall(r"\$\{[A-Z_]*(PASSWORD|SECRET|KEY)[A-Z_]*", text), "secrets are never interpolated"
    assert not re.findall(r"://[^/\s:]+:[^@\s]+@", text), "no credentials in URLs"
    assert "change-me" not in text
    out = subprocess.run(["git", "check-ignore", "-q", "docker/secrets.env"], cwd=ROOT)
    assert out.returncode == 0, "docker/secrets.env must be ignored by git"
    assert "**/secrets.env" in (ROOT / "docker" / "Dockerfile.dockerignore").read_text()


def test_init_secrets_writes_every_secret_of_the_topology_with_generated_values(tmp_path):
    from cryptography.fernet import Fernet

    out = tmp_path / "secrets.env"
    script = ROOT / "docker" / "init-secrets.sh"
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True)
    lines = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    values = dict(line.split("=", 1) for line in lines)

    assert set(values) == set(topology.SECRET_KEYS) == set(topology.Topology(tmp_path / "t").secrets)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    Fernet(values["AIRFLOW__CORE__FERNET_KEY"])  # a valid key
    generated = [values[k] for k in topology.SECRET_KEYS if "PASSWORD" in k or "SECRET" in k]
    assert len(set(generated)) == len(generated) and all(len(v) >= 32 for v in generated)
    assert values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == \
        f"postgresql+psycopg2://airflow:{values['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow"
    assert values["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0"
    assert f":{values['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow_auth" in values["MLFLOW_AUTH_DATABASE_URI"]
    # kept when it exists (the Postgres volume holds the database passwords), replaced with FORCE=1
    before = out.read_text()
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True)
    assert out.read_text() == before
    subprocess.run(["bash", str(script), str(out)], check=True, capture_output=True,
                   env={"FORCE": "1", "PATH": "/usr/bin:/bin"})
    assert out.read_text() != before


def test_serving_follows_the_generated_models_config_in_the_mounted_serving_directory(compose):
    serving = compose["tensorflow-serving"]
    assert serving["image"].startswith("tensorflow/serving:")
    # the same flags as `pipeline serve` in the topology, on the image's default ports
    assert serving["command"] == topology.serving_flags(PIPELINE_HOME, "/config/monitoring.config")
    assert f"{PIPELINE_HOME}/serving:{PIPELINE_HOME}/serving:ro" in serving["volumes"]
    assert not any("models.config" in v for v in serving["volumes"]), "a file mount: no renames"
    assert "./monitoring.config:/config/monitoring.config:ro" in serving["volumes"]
    assert serving["depends_on"] == {"airflow-init": {"condition": "service_completed_successfully"}}
    assert "models.config" in topology.INIT.read_text()  # init.sh writes the first, empty one


def test_mlflow_runs_its_basic_auth_app_on_postgres(compose):
    script = topology.MLFLOW_SERVER.read_text()
    assert "--app-name basic-auth" in script and "MLFLOW_AUTH_DATABASE_URI" in script
    env = compose["mlflow"]["environment"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"{PIPELINE_HOME}/mlflow/artifacts"
    topo = topology.Topology(ROOT / "unused")
    # the auth app's ini: in the topology's directory there, in the container's temporary directory here
    local = {"MLFLOW_AUTH_CONFIG_PATH"}
    for key in set(topo.mlflow_env()) - set(topo.base_env()) - set(topology.SECRET_KEYS) - local:
        assert key in env, key
    assert topo.secrets["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")


def test_only_the_ui_and_serving_ports_are_published_on_127_0_0_1_unless_configured(compose):
    published = {name: service["ports"] for name, service in compose.items() if service.get("ports")}
    assert published == {"airflow-apiserver": ["127.0.0.1:8080:8080"], "mlflow": ["127.0.0.1:5000:5000"],
                         "tensorflow-serving": ["127.0.0.1:8500:8500", "127.0.0.1:8501:8501"]}
    everywhere = services({"BIND_ADDRESS": "0.0.0.0"})
    assert everywhere["tensorflow-serving"]["ports"] == ["0.0.0.0:8500:8500", "0.0.0.0:8501:8501"]
