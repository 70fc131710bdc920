"""The commands layer: `foundry VERB --help` lists every recipe key of the verb, with its type, default
and description, generated from the config models; `--overwrite` is `overwrite=true`."""

from __future__ import annotations

import argparse

import pytest

from foundry.cli import main as cli
from foundry.commands import load_recipe_args, recipe_keys
from foundry.train.continual import ContinueConfig
from foundry.train.dpo import DPOConfig
from foundry.train.pretrain import PretrainConfig
from foundry.train.sft import SFTConfig

VERBS = {"pretrain": PretrainConfig, "continue": ContinueConfig, "sft": SFTConfig, "dpo": DPOConfig}


@pytest.mark.parametrize("verb", VERBS)
def test_help_lists_every_recipe_key_with_its_description(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        cli([verb, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    keys = recipe_keys(VERBS[verb])
    assert {"out_dir", "overwrite", "train.lr", "train.block_size", "train.distributed"} <= {k for k, *_ in keys}
    for key, type_name, default, description in keys:
        assert description, f"{verb}: recipe key '{key}' has no description"
        line = next(line for line in out.splitlines() if line.split() and line.split()[0] == key)
        assert type_name in line and (default in line if default else True)
        assert description[:40] in " ".join(out.split())


def test_keys_show_the_stage_defaults_and_nested_models():
    sft = {key: (type_name, default) for key, type_name, default, _ in recipe_keys(SFTConfig)}
    assert sft["train.max_steps"] == ("int", "300")  # SFT's own default, not pretraining's 1000
    assert sft["lora.rank"] == ("int", "8") and sft["lora"][0] == "LoRASpec | null"
    assert sft["init"][1] == "required" and sft["pack"] == ("bool", "true")
    mixture = {key for key, *_ in recipe_keys(ContinueConfig)}
    assert {"mixture", "mixture[].name", "mixture[].weight"} <= mixture


def test_overwrite_flag_sets_the_recipe_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out_dir: x\ndata: d\ntokenizer: t\n")
    args = argparse.Namespace(config=str(recipe), overrides=["train.lr=0.01"], overwrite=True)
    cfg = load_recipe_args(PretrainConfig, args)
    assert cfg.overwrite is True and cfg.train.lr == 0.01
    assert load_recipe_args(PretrainConfig, argparse.Namespace(config=str(recipe), overrides=[],
                                                               overwrite=False)).overwrite is False
