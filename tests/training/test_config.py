"""TrainConfig: YAML round trip, unknown keys and wrong types with their line, range checks."""

from __future__ import annotations

import pytest

from workbench.training.config import TrainConfig, TrainConfigError


def test_yaml_round_trip():
    config = TrainConfig(name="r1", base_model="m", dataset="d.txt", target_modules=["q_proj"], max_steps=5)
    assert TrainConfig.from_yaml(config.to_yaml(), "x") == config


@pytest.mark.parametrize("text, message", [
    ("name: r\ndataset: d\nbase_model: m\nlearnign_rate: 1\n", r"line 4: 'learnign_rate' is not a valid key"),
    ("name: r\ndataset: d\nbase_model: m\nbatch_size: four\n", r"line 4: 'batch_size' has the wrong type"),
    ("name: ../evil\ndataset: d\nbase_model: m\n", "Run name '../evil' is not allowed"),
    ("name: r\ndataset: d\n", "needs a base model"),
    ("name: r\ndataset: d\nbase_model: m\nlearning_rate: 5\n", "learning rate must be between 0 and 1"),
    ("name: r\ndataset: d\nbase_model: m\ncutoff_len: 4\n", "Cutoff length 4"),
    ("name: r\ndataset: d\nmethod: scratch\nn_embd: 100\nn_head: 3\n", "must divide into 3 heads"),
    ("name: r\ndataset: d\nbase_model: m\nepochs: 0\n", "Train for some epochs"),
    ("name: r\ndataset: d\nbase_model: m\nscheduler: wild\n", "Scheduler 'wild' is unknown"),
    ("- a list\n", "must be a mapping"),
    ("name: [unclosed\n", "not valid YAML at line"),
])
def test_bad_configs_say_what_and_where(text, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_yaml(text, "run.yaml")


def test_target_modules_may_be_a_comma_list():
    config = TrainConfig.from_dict({"name": "r", "dataset": "d", "base_model": "m", "target_modules": "q_proj, v_proj"})
    assert config.target_modules == ["q_proj", "v_proj"]
