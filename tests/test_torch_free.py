"""The spec pass and ``darkcfg info`` start without torch; the data-file and activation
descriptions they use agree with the torch modules that run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "cfgs" / "tiny-yolo-all.cfg"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_graph_pass_does_not_import_torch() -> None:
    mods = _modules_after("from darkcfg.cfg import read_cfg\nfrom darkcfg.graph import build_graph\n"
                          f"g = build_graph(read_cfg({str(CFG)!r}))\nassert g.bflops > 0")
    assert "darkcfg.graph" in mods and "darkcfg.specs.conv" in mods
    assert "torch" not in mods


def test_info_does_not_build_torch_layers() -> None:
    mods = _modules_after("import contextlib, io\nfrom darkcfg.cli import main\n"
                          f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['info', {str(CFG)!r}]) == 0")
    assert "darkcfg.cli" in mods
    assert not any(m == "darkcfg.layers" or m.startswith("darkcfg.layers.") for m in mods)


def test_activation_names_are_the_implemented_ones() -> None:
    from darkcfg.activation_names import ACTIVATION_NAMES
    from darkcfg.layers.activations import ACTIVATIONS

    assert ACTIVATION_NAMES == frozenset(ACTIVATIONS)


def test_tree_file_parsed_once(tmp_path: Path) -> None:
    from darkcfg import datafiles
    from darkcfg.layers import functional

    tree = tmp_path / "t.tree"
    tree.write_text("a -1\nb -1\nc 0\n")
    first = datafiles.read_tree(tree)
    assert datafiles.read_tree(str(tree)) is first  # cached: the builder and the decoder share it
    assert functional.read_tree is datafiles.read_tree
    assert first.groups() == [(0, 2), (2, 1)]
    tree.write_text("a -1\nb -1\nc 0\nd 0\n")  # a changed file is read again
    assert datafiles.read_tree(tree).groups() == [(0, 2), (2, 2)]
    mapping = tmp_path / "m.map"
    mapping.write_text("3\n\nx\n-1\n")
    assert datafiles.read_class_map(mapping) == (3, 0, 0, -1)
