"""Darknet's learning-rate policies (network.c get_current_rate) against values worked out by hand."""

import math

import pytest

from darkcfg.cfg import parse_cfg_text
from darkcfg.errors import CfgError
from darkcfg.train.lr import learning_rate
from darkcfg.train.settings import read_train_settings


def settings(net_lines: str, head: str = "[maxpool]\nsize=2\nstride=2\n"):
    return read_train_settings(parse_cfg_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + net_lines + head))


def test_steps_with_burn_in_hand_values():
    s = settings("learning_rate=0.001\nburn_in=1000\npower=4\nmax_batches=500000\npolicy=steps\n"
                 "steps=400000,450000\nscales=.1,.1\n")
    assert learning_rate(s, 0) == 0.0
    assert learning_rate(s, 500) == pytest.approx(0.001 * 0.0625)      # (1/2)^4
    assert learning_rate(s, 999) == pytest.approx(0.001 * 0.999 ** 4)
    assert learning_rate(s, 1000) == pytest.approx(0.001)
    assert learning_rate(s, 399999) == pytest.approx(0.001)
    assert learning_rate(s, 400000) == pytest.approx(0.0001)            # steps[i] > batch_num is false at equality
    assert learning_rate(s, 450000) == pytest.approx(0.00001)


def test_steps_scales_may_grow_and_short_scales_default_to_one():
    s = settings("learning_rate=0.1\npolicy=steps\nsteps=10,20,30\nscales=10,.5\nmax_batches=40\n")
    assert [learning_rate(s, b) for b in (9, 10, 20, 30, 39)] == pytest.approx([0.1, 1.0, 0.5, 0.5, 0.5])


def test_step_exp_poly_sigmoid_constant():
    s = settings("learning_rate=0.01\npolicy=step\nstep=100\nscale=.5\nmax_batches=1000\n")
    assert learning_rate(s, 99) == pytest.approx(0.01) and learning_rate(s, 250) == pytest.approx(0.0025)
    s = settings("learning_rate=0.01\npolicy=exp\ngamma=0.9\nmax_batches=1000\n")
    assert learning_rate(s, 3) == pytest.approx(0.01 * 0.729)
    s = settings("learning_rate=0.01\npolicy=poly\npower=4\nmax_batches=1000\nburn_in=100\n")
    assert learning_rate(s, 50) == pytest.approx(0.01 * 0.5 ** 4)      # burn-in uses the same power
    assert learning_rate(s, 500) == pytest.approx(0.01 * 0.0625)
    assert learning_rate(s, 1000) == 0.0
    s = settings("learning_rate=0.01\npolicy=sigmoid\ngamma=0.1\nstep=50\nmax_batches=100\n")
    assert learning_rate(s, 50) == pytest.approx(0.005)
    assert learning_rate(s, 60) == pytest.approx(0.01 / (1 + math.e))
    s = settings("learning_rate=0.02\nmax_batches=10\n")
    assert s.policy == "constant" and learning_rate(s, 7) == 0.02


def test_sgdr_cycles_double():
    s = settings("learning_rate=0.1\nlearning_rate_min=0\npolicy=sgdr\nsgdr_cycle=10\nmax_batches=100\n")
    assert learning_rate(s, 0) == pytest.approx(0.1)
    assert learning_rate(s, 5) == pytest.approx(0.05, abs=1e-9)   # half-way through the first cycle
    assert learning_rate(s, 10) == pytest.approx(0.0, abs=1e-9)   # end of the cycle (loop uses <)
    assert learning_rate(s, 20) == pytest.approx(0.05, abs=1e-9)  # cycle 2 spans 10..30
    assert learning_rate(s, 30) == pytest.approx(0.0, abs=1e-9)


def test_random_policy_is_lr_times_u_to_the_power():
    import random

    s = settings("learning_rate=0.5\npolicy=random\npower=2\nmax_batches=10\n")
    rng = random.Random(3)
    u = random.Random(3).random()
    assert learning_rate(s, 5, rng) == pytest.approx(0.5 * u * u)


def test_bad_policy_and_batch_are_cfg_errors_with_lines():
    with pytest.raises(CfgError, match="unknown learning-rate policy 'stepz'"):
        settings("policy=stepz\n")
    with pytest.raises(CfgError, match="not a multiple of subdivisions"):
        settings("batch=10\nsubdivisions=4\n")
    with pytest.raises(CfgError, match="needs 'scales'"):
        settings("policy=steps\nsteps=1,2\n")


def test_head_keys_come_from_the_last_detection_layer():
    s = settings("batch=8\nsubdivisions=2\n", "[yolo]\njitter=.3\nrandom=1\nclasses=3\n"
                                                "[yolo]\njitter=.1\nresize=1.5\nclasses=3\nmax=50\n")
    assert (s.jitter, s.resize, s.random, s.max_boxes, s.classes, s.mini_batch) == (0.1, 1.5, 0.0, 50, 3, 4)
