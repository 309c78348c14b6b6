"""darkcfg against Darknet's own layer outputs: every case of ``shared/conformance/cases``.

One test per case (id = case name), collected at import time from
:func:`darkcfg.shared.shared_dir`; without the shared fixtures folder a single test
skips with the reason.  Synthetic weights are regenerated in memory by
:func:`darkcfg.conformance.run_case` (nothing is written anywhere).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from darkcfg import conformance
from darkcfg.shared import conformance_cases
from fastpath_helpers import count_calls

CASES = conformance_cases()
CASES_DIR = CASES[0].parent if CASES else None

# Two small, fast cases for the report entry point.
SMALL_CASES = ["cfg-cifar.test", "cfg-tiny"]  # sorted: the report runs cases in name order


# Without the fixtures the test still exists once and skips through the `shared` fixture.
@pytest.mark.parametrize("case_dir", CASES or [None], ids=[c.name for c in CASES] or ["no-shared"])
def test_case(case_dir: Path, shared: Path, make_weights) -> None:
    result = conformance.run_case(case_dir, shared, make_weights)
    assert result.passed, f"{case_dir.name}: " + "\n  ".join(result.failures)
    synthetic = "file" not in json.loads((case_dir / "meta.json").read_text())["weights"]
    # synthetic weights: regenerated in memory, sha256 must match meta.json; real ones: not hashed
    assert result.weights_sha256_ok is (True if synthetic else None), \
        f"{case_dir.name}: regenerated weights' sha256 check gave {result.weights_sha256_ok}"
    assert result.compared > 0


def test_report_entry_point(shared: Path, capsys) -> None:
    names = [n for n in SMALL_CASES if (CASES_DIR / n / "meta.json").is_file()]
    assert len(names) == 2, f"small cases {SMALL_CASES} missing from {CASES_DIR}"
    rc = conformance.main(names)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert rc == 0, out
    assert len(lines) == 3, out
    for name, line in zip(names, lines):
        assert line.split()[0] == name, line
        assert line.rstrip().endswith("PASS"), line
        assert re.search(r"layers=\s*\d+", line), line
    assert lines[-1] == "2/2 cases pass"


# The fast paths of optimize() answer to Darknet itself too: every depthwise-heavy case (NHWC, the
# direct kernels of layers/direct_conv.py) and dense ones covering the fused oneDNN conv with
# leaky/mish/swish, the native mish, xnor and SAM.  (`darkcfg conformance --optimized` runs all.)
OPTIMIZED_CASES = sorted({c.name for c in CASES if c.name.startswith("real-")} | {
    "csp-mobilenet-v2", "csp-csmobilenet-v2", "cfg-efficientnet_b0", "cfg-efficientnet-lite3", "csp-enetb0",
    "cfg-enet-coco", "cfg-yolov4", "cfg-yolov4-tiny", "csp-csresnext50-panet-spp", "cfg-yolov4-csp-swish",
    "cfg-yolov3-tiny_xnor", "cfg-yolov4-sam-mish-csp-reorg-bfm", "cfg-yolov7-tiny", "legacy-csp-resnext50"})


#: Dense nets whose 3x3 stride-1 convs take Winograd at the fixtures' sizes (F(4x4) and F(2x2)).
WINOGRAD_CASES = {"cfg-yolov4", "cfg-yolov4-tiny", "csp-csresnext50-panet-spp", "cfg-yolov4-csp-swish",
                  "cfg-yolov4-sam-mish-csp-reorg-bfm", "cfg-yolov7-tiny", "real-tiny-darknet"}


#: Dense cases whose first conv takes the stem kernel (3x3 on the RGB image; csresnext50's is 7x7,
#: yolov4-csp-swish's activation is swish: oneDNN runs those).
STEM_CASES = WINOGRAD_CASES - {"csp-csresnext50-panet-spp", "cfg-yolov4-csp-swish"}


#: ResNeXt cases whose 32-group 3x3 convs (4 and 8 channels a group) take the grouped kernel.
GROUPED_CASES = {"csp-csresnext50-panet-spp", "legacy-csp-resnext50"}


@pytest.mark.parametrize("name", OPTIMIZED_CASES if CASES else ["no-shared"])
def test_case_optimized(name: str, shared: Path, make_weights, monkeypatch: pytest.MonkeyPatch) -> None:
    from darkcfg import native
    from darkcfg.layers.direct_conv import DirectConv
    from darkcfg.layers.winograd import WinogradConv

    calls = {kind: count_calls(monkeypatch, kind) for kind in (DirectConv, WinogradConv)}
    kinds: list = []  # the direct kernels' kinds that produced an output
    launch = DirectConv._launch

    def recorded(self: DirectConv, *args: Any) -> Any:
        y = launch(self, *args)
        if y is not None:
            kinds.append(self.kind)
        return y

    monkeypatch.setattr(DirectConv, "_launch", recorded)
    result = conformance.run_case(CASES_DIR / name, shared, make_weights, optimized=True)
    assert result.passed, f"{name} optimized: " + "\n  ".join(result.failures)
    if native.library() is None:
        return
    if "fastest" in name or "mobilenet" in name.lower():
        assert sum(calls[DirectConv]) > 0, f"{name}: the direct kernels did not run"
    if name in WINOGRAD_CASES:
        assert sum(calls[WinogradConv]) > 0, f"{name}: Winograd did not run"
    if name in STEM_CASES:
        assert "stem" in kinds, f"{name}: the RGB stem conv did not take its kernel"
    if name in GROUPED_CASES:
        assert "grouped" in kinds, f"{name}: the 32-group 3x3 convs did not take the grouped kernel"

