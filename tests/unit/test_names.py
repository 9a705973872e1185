from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.names import MODEL_NAME_PATTERN, check_model_name, model_name_from

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["penguins", "m", "half_plus_two", "churn-v2.1", "A" * 128, "0model"])
def test_valid_names_pass(name):
    assert check_model_name(name, "serving.model_name") == name


@pytest.mark.parametrize("name, problem", [
    ("", "it is empty"),
    (".", "'.' is a relative directory"),
    ("..", "'..' is a relative directory"),
    ("a/b", "it contains '/'"),
    ("a\\b", "it contains '\\'"),
    ("a\0b", "it contains a NUL character"),
    ("m:predict", "it contains ':'"),
    ("my model", "it contains ' '"),
    (".hidden", "it starts with '.'"),
    ("-flag", "it starts with '-'"),
    ("modèle", "it contains 'è'"),
    ("A" * 129, "it is 129 characters long"),
    ("a\n", "it contains '\\n'"),
])
def test_invalid_names_name_where_the_problem_and_the_rule(name, problem):
    with pytest.raises(ValueError) as info:
        check_model_name(name, "--model-name")
    message = str(info.value)
    assert message.startswith("--model-name: invalid model name") and problem in message
    assert "letters, digits, '.', '_' or '-'" in message


def test_a_non_string_is_refused():
    with pytest.raises(ValueError, match=r"serving\.model_name: a model name must be a string, got 3"):
        check_model_name(3, "serving.model_name")


@pytest.mark.parametrize("text, name", [("churn", "churn"), ("My Data (v2)", "My_Data_v2_"), (".hidden", "hidden"),
                                        ("???", "model"), ("x" * 300, "x" * 128)])
def test_names_made_from_file_stems_are_valid(text, name):
    assert model_name_from(text) == name
    check_model_name(model_name_from(text), "name")


@pytest.mark.parametrize("dag_file", ["training_pipeline.py", "drift_monitor.py"])
def test_the_dags_model_name_param_uses_the_same_pattern(dag_file):
    """The trigger form refuses what check_model_name refuses (read from the DAG file, without Airflow)."""
    tree = ast.parse((REPO / "dags" / dag_file).read_text())
    patterns = [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
                for key, value in zip(node.keys, node.values)
                if isinstance(key, ast.Constant) and key.value == "model_name" and isinstance(value, ast.Call)
                for kw in value.keywords if kw.arg == "pattern"]
    assert patterns == [MODEL_NAME_PATTERN]
    assert re.fullmatch(MODEL_NAME_PATTERN, "penguins") and not re.fullmatch(MODEL_NAME_PATTERN, "..")


def _usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "deploy", "promote", "rollback", "lineage", "monitor"])
def test_every_model_name_flag_refuses_a_bad_name(command, capsys):
    """Refused while the arguments are parsed: before Airflow, MLflow or a model directory is touched."""
    from pipeline.commands import deploy, monitor, train

    main = {"train": train.parse_args, "deploy": deploy.deploy_main, "promote": deploy.promote_main,
            "rollback": deploy.rollback_main, "lineage": deploy.lineage_main, "monitor": monitor.main}[command]
    extra = ["--version", "1"] if command == "deploy" else []
    err = _usage_error(main, [*extra, "--model-name", "../etc"], capsys)
    assert "argument --model-name: invalid model name '../etc': it contains '/'" in err
    assert "letters, digits" in err


def test_a_good_model_name_flag_passes():
    from pipeline.commands import train

    assert train.parse_args(["--model-name", "churn-v2"]).model_name == "churn-v2"
