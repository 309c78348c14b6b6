import pathlib

import pytest

from darkcfg import conformance
from darkcfg.shared import shared_dir

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared():
    p = shared_dir()
    if p is None:
        pytest.skip("../shared (Darknet conformance fixtures) not found; set DARKCFG_SHARED to run this test")
    return p


@pytest.fixture(scope="session")
def make_weights(shared):
    """The fixtures' own weights/input generator (``conformance/make_weights.py``), imported once."""
    return conformance.load_make_weights(shared / "conformance")
