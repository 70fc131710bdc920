"""Recipes: unknown keys and wrong types are one-line errors naming the file; overrides are typed."""

import pytest

from foundry.cli import main as cli_main
from foundry.config import StrictModel, TrainConfig, load_config
from foundry.errors import ConfigError


class Recipe(StrictModel):
    out_dir: str = "runs/x"
    train: TrainConfig = TrainConfig()


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 0.01\n  max_steps: 5\n")
    cfg = load_config(Recipe, path, ["train.lr=1e-4", "train.compile=true", "out_dir=elsewhere"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.compile is True and cfg.train.max_steps == 5
    assert cfg.out_dir == "elsewhere"


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lrr: 0.01\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key 'train\.lrr' \(did you mean 'train\.lr'\?\)"):
        load_config(Recipe, path)


def test_wrong_type_and_bad_value(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"'train\.max_steps'"):
        load_config(Recipe, path)
    with pytest.raises(ConfigError, match=r"'train\.lr'.*greater than 0"):
        load_config(Recipe, None, ["train.lr=-1"])


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: not valid YAML"):
        load_config(Recipe, path)


def test_cli_unknown_verb_is_one_line(capsys):
    assert cli_main(["pretrian"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["foundry: error: unknown verb 'pretrian'; run 'foundry --help' for the list"]
