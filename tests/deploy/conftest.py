"""Fixtures of the deploy tests (helpers in deploy_helpers.py, importable by the test modules)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # deploy_helpers, under any --import-mode
from deploy_helpers import Registry, build_templates  # noqa: E402


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> dict[str, Path]:
    """The small penguins models (versions 1-3) and two with a contract-breaking signature, written once."""
    return build_templates(tmp_path_factory.mktemp("deploy_templates"))


@pytest.fixture
def reg(pipeline_home) -> Registry:
    """A registry and serving directory in this test's own PIPELINE_HOME."""
    return Registry(pipeline_home)
