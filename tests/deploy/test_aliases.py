"""Tests of pipeline.deploy.aliases: the aliases a deploy leaves."""
from __future__ import annotations

import pytest

from pipeline.deploy import aliases


@pytest.mark.parametrize("current, canary, after", [
    ({}, False, {"champion": 1, "challenger": None}),
    ({"champion": 1}, False, {"champion": 2, "previous": 1, "challenger": None}),
    ({"champion": 2, "previous": 1, "challenger": 3}, False, {"champion": 4, "previous": 2, "challenger": None}),
    ({"champion": 1}, True, {"champion": 1, "challenger": 2}),
    ({"champion": 1, "challenger": 2}, True, {"champion": 1, "challenger": 3}),
])
def test_new_aliases(current, canary, after):
    version = max([0, *current.values()]) + 1
    assert aliases.new_aliases(current, version, canary) == after
