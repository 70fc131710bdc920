"""`foundry selftest`: passes on a healthy recipe, fails (exit 1) when a promise is broken, shrinks big recipes."""

from __future__ import annotations

import json

import pytest

from tests.helpers.reliability import pretrain_recipe

from foundry.cli import main as cli


@pytest.mark.slow
def test_selftest_passes_on_a_healthy_recipe(ws, tmp_path, capsys):
    recipe = pretrain_recipe(ws, tmp_path / "r.yaml", tmp_path / "never-written", grad_accum_steps=2)
    assert cli(["selftest", "--config", str(recipe), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " PASS " in line or " FAIL " in line]
    assert len(rows) == 4 and all(" PASS " in r for r in rows), out
    assert "4 losses bit for bit" in out and "accumulation 2 x 2 == 1 x 4" in out and "4 of 4 checks passed" in out
    assert not (tmp_path / "never-written").exists()  # the user's out_dir is never touched


@pytest.mark.slow
def test_selftest_fails_when_the_export_is_wrong(ws, tmp_path, capsys, monkeypatch):
    import foundry.model.hf as hf

    real = hf.export_hf

    def off_by_a_little(model, tokenizer, out_dir, overwrite=False):  # a norm epsilon lost in translation
        out = real(model, tokenizer, out_dir, overwrite=overwrite)
        cfg = json.loads((out / "config.json").read_text())
        cfg["rms_norm_eps"] = 0.5
        (out / "config.json").write_text(json.dumps(cfg))
        return out

    monkeypatch.setattr(hf, "export_hf", off_by_a_little)
    recipe = pretrain_recipe(ws, tmp_path / "r.yaml", tmp_path / "out")
    assert cli(["selftest", "--config", str(recipe), "--steps", "2"]) == 1
    out = capsys.readouterr().out
    export_row = next(line for line in out.splitlines() if "export" in line and ("PASS" in line or "FAIL" in line))
    assert "FAIL" in export_row and "max |logit diff|" in export_row
    assert "3 of 4 checks passed" in out and "FAILED: export" in out


def test_selftest_shrinks_a_big_recipe_and_says_so(ws, tmp_path):
    from foundry.config import load_config
    from foundry.selftest import MAX_PARAMS, shrink
    from foundry.train.pretrain import PretrainConfig

    recipe = pretrain_recipe(ws, tmp_path / "r.yaml", tmp_path / "out", micro_batch_size=32, block_size=512,
                             grad_accum_steps=8)
    import yaml

    data = yaml.safe_load(recipe.read_text())
    data["model"] = {"preset": "124m", "max_seq_len": 512}
    recipe.write_text(yaml.safe_dump(data))
    tc, model_config, notes = shrink(load_config(PretrainConfig, recipe), 6)
    assert (tc.micro_batch_size, tc.block_size, tc.grad_accum_steps, tc.max_steps) == (4, 128, 4, 6)
    assert tc.device == "cpu" and tc.dtype == "float32" and not tc.compile
    assert model_config.num_params() < MAX_PARAMS and model_config.vocab_size == 300
    assert any("124m" in n and "'test' preset" in n for n in notes) and any("batch cut" in n for n in notes)


def test_selftest_refuses_too_few_steps_and_untokenised_data(ws, tmp_path, capsys):
    recipe = pretrain_recipe(ws, tmp_path / "r.yaml", tmp_path / "out")
    assert cli(["selftest", "--config", str(recipe), "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("foundry: error: --steps must be at least 2") and "\n" not in err
    assert cli(["selftest", "--config", str(recipe), f"data={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"foundry: error: {tmp_path}: no token shards") and "\n" not in err
