"""Fixtures of the detector tests (the rows themselves: :mod:`planted_rows`)."""

from __future__ import annotations

import pytest
from planted_rows import Planted, make_rows


@pytest.fixture(scope="session")
def planted() -> Planted:
    return make_rows()
