import pathlib

import pytest

from darkcfg.shared import shared_dir

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared():
    p = shared_dir()
    if p is None:
        pytest.skip("../shared (Darknet conformance fixtures) not found; set DARKCFG_SHARED to run this test")
    return p
