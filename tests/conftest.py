import os, pathlib, pytest
REPO = pathlib.Path(__file__).resolve().parents[1]
def shared_dir():
    p = pathlib.Path(os.environ.get("DARKCFG_SHARED", REPO.parent / "shared"))
    return p if (p / "conformance").is_dir() else None
@pytest.fixture(scope="session")
def shared():
    p = shared_dir()
    if p is None:
        pytest.skip("../shared (Darknet conformance fixtures) not found; set DARKCFG_SHARED to run this test")
    return p
