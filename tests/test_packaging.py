"""The wheel carries every data file the package reads (setup.cfg package_data), the license and
py.typed.  (.ci/run also builds the wheel, installs it in a fresh venv and runs it.)"""

from __future__ import annotations

import configparser
import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_data_covers_every_data_file() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["darkcfg"].split(",")]
    package = REPO / "darkcfg"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert "data/zoo.json" in data and "py.typed" in data
    missing = [d for d in data if not any(fnmatch.fnmatch(d, pat) for pat in patterns)]
    assert missing == [], f"not shipped in the wheel: {missing}"
    assert cfg["metadata"]["license"] == "MIT" and cfg["metadata"]["license_files"] == "LICENSE"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_zoo_index_is_inside_the_package() -> None:
    from darkcfg.zoo import DEFAULT_INDEX, cache_home

    assert DEFAULT_INDEX.parent.parent == REPO / "darkcfg" and DEFAULT_INDEX.is_file()
    assert REPO / "darkcfg" not in cache_home().parents
