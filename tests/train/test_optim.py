"""Schedules against their formulas, and the weight-decay split."""

import math

import pytest
import torch

from hybridcore.model import build_model
from hybridcore.presets import get_preset
from hybridcore.train import Schedule, build_optimizer, split_by_decay
from hybridcore.train.optim import set_hyperparameters


def test_warmup_is_linear_for_every_schedule():
    for kind in ("cosine", "wsd", "power"):
        schedule = Schedule(kind, total_steps=100, warmup=10, min_ratio=0.1)
        assert [schedule.lr_factor(s) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
        assert schedule.wd_factor(5) == 1.0


def test_cosine_values():
    schedule = Schedule("cosine", total_steps=110, warmup=10, min_ratio=0.1)
    assert schedule.lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert schedule.lr_factor(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert schedule.lr_factor(110) == pytest.approx(0.1)
    assert schedule.wd_factor(60) == 1.0


def test_warmup_stable_decay_values():
    schedule = Schedule("wsd", total_steps=100, warmup=10, min_ratio=0.0, decay_fraction=0.2)
    assert schedule.lr_factor(11) == schedule.lr_factor(80) == 1.0  # stable until step N - 0.2 N
    assert schedule.lr_factor(90) == pytest.approx(0.5)  # halfway down the linear decay
    assert schedule.lr_factor(100) == pytest.approx(0.0)
    assert Schedule("wsd", 100, 10, 0.2, 0.2).lr_factor(100) == pytest.approx(0.2)


def test_power_law_scales_lr_and_weight_decay():
    schedule = Schedule("power", total_steps=1000, warmup=10, min_ratio=0.05, power_exponent=0.25)
    assert schedule.lr_factor(160) == pytest.approx(16 ** -0.25)  # 0.5
    assert schedule.wd_factor(160) == pytest.approx(0.5)
    assert schedule.lr_factor(810) == pytest.approx(81 ** -0.25)  # 1/3
    assert Schedule("power", 10 ** 9, 10, 0.1, power_exponent=0.25).lr_factor(10 ** 6) == pytest.approx(0.1)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        Schedule("linear", total_steps=10)


def test_weight_decay_only_on_matrices():
    model = build_model(get_preset("debug").replace(layout="P-M*-", attention_bias=True, mlp_bias=True), seed=0)
    decay, no_decay = split_by_decay(model)
    decay_names = {n for n, _ in decay}
    no_decay_names = {n for n, _ in no_decay}
    assert all(p.ndim >= 2 for _, p in decay)
    for suffix in ("A_log", "D", "dt_bias", "norm.weight", "norm_weight", "conv_bias_x", "q_proj.bias",
                   "down_proj.bias"):
        found = [n for n in no_decay_names if n.endswith(suffix)]
        assert found, suffix
        assert not any(n.endswith(suffix) for n in decay_names), suffix
    assert "final_norm.weight" in no_decay_names
    for name in ("embed.weight", "lm_head.weight", "layers.0.attention.q_proj.weight",
                 "layers.0.mamba.in_proj.weight_z", "layers.1.mlp.up_proj.weight"):
        assert name in decay_names, name
    assert len(decay) + len(no_decay) == len(list(model.parameters()))

    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    set_hyperparameters(optimizer, lr=5e-4, weight_decay=0.05)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 5e-4]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_no_decay_parameters_are_not_shrunk():
    model = build_model(get_preset("debug").replace(layout="P-"), seed=0)
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    optimizer.step()
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            torch.testing.assert_close(param, before[name] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(param, before[name]), name
