"""The error of the deploy stage."""
from __future__ import annotations

from typing import Any, Mapping


class DeployError(RuntimeError):
    """A deployment was refused or failed; nothing was published and the served state is unchanged.

    ``report`` holds what the checks measured before the failure (logged to the deploy stage run)."""

    def __init__(self, message: str, report: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.report = dict(report or {})
