"""Every registered component passes the contract checks that plugin authors also use (haste_core.testing)."""

from __future__ import annotations

import pytest

from haste_core.plugins import load_plugins
from haste_core.testing import CHECKS

ENTRIES = [(family, entry) for family, registry in load_plugins().registries.items() for entry in registry.entries()]


@pytest.mark.parametrize(("family", "entry"), ENTRIES, ids=[f"{f}:{e.name}" for f, e in ENTRIES])
def test_component_contract(family, entry):
    CHECKS[family](entry)


def test_every_family_has_components():
    assert {family for family, _ in ENTRIES} == set(CHECKS)
