"""``darkcfg train`` end to end on darkcfg's own tiny cfg: loss, lr, checkpoints, resume, CLI."""

import json
import math

import pytest
import torch

import darkcfg
from darkcfg.cli import main
from darkcfg.errors import DarkcfgError
from darkcfg.train import TrainOptions, train
from darkcfg.train.lr import learning_rate
from darkcfg.train.settings import read_train_settings
from darkcfg.cfg import read_cfg
from darkcfg.weights import parse_header

from test_train_augment import write_dataset

CFG = "cfgs/tiny-train.cfg"


@pytest.fixture()
def dataset(tmp_path):
    data = write_dataset(tmp_path, n=4)
    with open(data, "a") as f:
        f.write("saveweights = 10\nsavelast = 5\n")
    return data


def test_train_checkpoints_resume_clear(dataset, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "backup"
    res = train(TrainOptions(str(dataset), CFG, workers=0, progress=False, seed=1))
    assert res.iterations == 20 and res.seen == 80 and len(res.losses) == 20
    assert all(math.isfinite(v) and v > 0 for v in res.losses)
    s = read_train_settings(read_cfg(CFG))
    assert res.rates == pytest.approx([learning_rate(s, i) for i in range(1, 21)])  # first update: batch_num 1
    assert res.rates[0] == pytest.approx(0.01 * (1 / 4) ** 2) and res.rates[-1] == pytest.approx(0.0001)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["tiny-train_10.weights", "tiny-train_20.weights", "tiny-train_final.weights",
                     "tiny-train_last.weights"]
    assert parse_header((out / "tiny-train_10.weights").read_bytes(), "x").seen == 40
    final = (out / "tiny-train_final.weights").read_bytes()
    assert parse_header(final, "x").seen == 80
    model = darkcfg.load(CFG, out / "tiny-train_final.weights")
    model.save_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == final        # reloads byte for byte
    # a fresh run into the same backup refuses to overwrite the earlier run's checkpoints
    with pytest.raises(DarkcfgError, match="exists from an earlier run"):
        train(TrainOptions(str(dataset), CFG, workers=0, progress=False))
    # resume from _10: continues at iteration 10 up to max_batches
    res = train(TrainOptions(str(dataset), CFG, str(out / "tiny-train_10.weights"), workers=0, progress=False,
                             max_batches=12))
    assert (res.iterations, res.seen, len(res.losses)) == (12, 48, 2)
    assert parse_header((out / "tiny-train_final.weights").read_bytes(), "x").seen == 48
    # --clear restarts the schedule from 0
    res = train(TrainOptions(str(dataset), CFG, str(out / "tiny-train_final.weights"), clear=True, workers=0,
                             progress=False, max_batches=3, out=str(tmp_path / "b2")))
    assert (res.iterations, res.seen) == (3, 12) and res.rates[0] == pytest.approx(learning_rate(s, 1))


def test_cli_train_json_and_errors(dataset, tmp_path, capsys):
    rc = main(["train", str(dataset), CFG, "--workers", "0", "--max-batches", "2", "--out", str(tmp_path / "o"),
               "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["iterations"] == 2 and out["seen"] == 8 and out["saved"][-1].endswith(
        "tiny-train_final.weights")
    (tmp_path / "c.data").write_text("classes=5\ntrain=%s\n" % (tmp_path / "train.txt"))
    assert main(["train", str(tmp_path / "c.data"), CFG, "--workers", "0", "--out", str(tmp_path / "p")]) == 2
    assert "classes=5 but the cfg's detection layers have classes=2" in capsys.readouterr().err


def test_partial_weights_map_best_random_sizes_and_bf16(dataset, tmp_path, monkeypatch):
    import darkcfg as dk
    from darkcfg.train.trainer import load_initial_weights

    # a .conv.N-style partial file loads the layers it holds and leaves the rest alone
    full = darkcfg.load(CFG)
    full.save_weights(tmp_path / "p.conv.2", upto=2)
    fresh = darkcfg.load(CFG)
    before = fresh.layers[2].conv.weight.clone()
    with pytest.warns(UserWarning, match="partial weights, layers 0..1"):
        load_initial_weights(fresh, tmp_path / "p.conv.2")
    assert torch.equal(fresh.layers[0].conv.weight, full.layers[0].conv.weight)
    assert torch.equal(fresh.layers[2].conv.weight, before)

    # --map: the evaluator runs every max(100, 4 epochs) iterations and at the end; _best follows the max
    calls = []

    def fake_evaluate(model, data, progress=None):
        assert not model.training
        calls.append(model.seen)
        return {"map": [0.2, 0.5, 0.4][len(calls) - 1]}

    monkeypatch.setattr(dk, "evaluate", fake_evaluate, raising=False)
    text = open(CFG).read().replace("random=0", "random=1").replace("max_batches=20", "max_batches=3")
    cfg = tmp_path / "rnd.cfg"
    cfg.write_text(text)
    res = train(TrainOptions(str(dataset), str(cfg), workers=0, progress=False, map=True, amp="on",
                             out=str(tmp_path / "m")))
    assert calls == [12] and res.best_map == 0.2 and (tmp_path / "m" / "rnd_best.weights").exists()
    assert all(math.isfinite(v) for v in res.losses)   # bfloat16 autocast on CPU trains
    # random=1: the first window trains at the largest size, round(1.4*64/32 + 1)*32 = 128
    from darkcfg.train.dataset import BatchPlan

    s = read_train_settings(read_cfg(str(cfg)))
    plan = list(BatchPlan(4, s, 64, 64, seed=0))
    assert {(w, h) for mb in plan for _, w, h, _ in mb} == {(128, 128)}


def test_interrupt_saves_last_completed_iteration(dataset, tmp_path, monkeypatch):
    import darkcfg.train.trainer as trainer

    real = trainer.learning_rate

    def rate(s, k):
        if k == 3:
            raise KeyboardInterrupt
        return real(s, k)

    monkeypatch.setattr(trainer, "learning_rate", rate)
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(str(dataset), CFG, workers=0, progress=False, out=str(tmp_path / "i")))
    last = tmp_path / "i" / "tiny-train_last.weights"
    assert parse_header(last.read_bytes(), "x").seen == 8          # 2 completed iterations of batch 4
    assert not (tmp_path / "i" / "tiny-train_final.weights").exists()
