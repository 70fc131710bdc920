"""`foundry export --format hf`: transformers loads it offline with the same logits, greedy tokens and chat text."""

import json

import pytest
import torch

from foundry.cli import main as cli
from foundry.data.chat import render_chat
from foundry.model.hf import export_hf
from foundry.serve.generate import generate

from tests.helpers.serve_fixtures import tiny_checkpoint, tiny_model, tiny_tokenizer

transformers = pytest.importorskip("transformers")


def _hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(input_ids=ids).logits


@pytest.mark.parametrize("tie,bias", [(True, False), (False, False), (True, True)])
def test_export_logits_and_greedy_match_transformers(tmp_path, tie, bias):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1, tie_embeddings=tie, attention_bias=bias)
    if bias:  # non-zero q/k/v biases, so a dropped bias would show in the logits
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.5)
    out = export_hf(model, tok, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is tie
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, tok.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
    err = (ours - _hf_logits(hf, ids)).abs().max().item()
    assert err < 1e-4, err
    prompt = tok.encode("the river town was founded by")
    mine = list(generate(model, tok, prompt, max_new_tokens=20, temperature=0, stop_ids=[]))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                         eos_token_id=None, pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    assert mine == theirs and len(mine) == 20


def test_export_tokenizer_and_chat_template(tmp_path):
    tok = tiny_tokenizer()
    out = export_hf(tiny_model(tok), tok, tmp_path / "hf")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, tok.eot_id]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"},
                {"role": "assistant", "content": "the river"}, {"role": "user", "content": "question?"}]
    ours, _ = render_chat(tok, messages, add_generation_prompt=True)
    theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
    assert list(theirs) == ours
    text = "the river town, café 日本"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_export_cli_refuses_existing_target_unless_overwrite(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(ckpt)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli(["export", str(ckpt), "--out", str(out), "--format", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error:") and "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    assert cli(["export", str(ckpt), "--out", str(out), "--format", "hf", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    transformers.AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("qk_norm,mlp_act,arch", [(True, "silu", "Qwen3ForCausalLM"),
                                                  (False, "relu2", "LlamaForCausalLM"),
                                                  (True, "relu2", "Qwen3ForCausalLM")])
def test_recipe_options_export_to_a_transformers_class_and_back(tmp_path, qk_norm, mlp_act, arch):
    """QK-norm exports as Qwen3 (its q_norm/k_norm), a squared-ReLU gate as `hidden_act: relu2`; logits
    within 1e-4 of transformers', and `foundry import` reads the directory back to the same model."""
    from foundry.checkpoints import load_model

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2, qk_norm=qk_norm, mlp_act=mlp_act)
    with torch.no_grad():  # norm gains away from 1, so a dropped or misplaced q/k norm would show
        for name, p in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                p.uniform_(0.5, 1.5)
    out = export_hf(model, tok, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [arch] and cfg["hidden_act"] == mlp_act
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.randint(0, tok.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - _hf_logits(hf, ids)).abs().max().item() < 1e-4
    assert cli(["import", str(out), "--out", str(tmp_path / "back")]) == 0
    back, _ = load_model(tmp_path / "back")
    assert back.config.qk_norm == qk_norm and back.config.mlp_act == mlp_act
    with torch.no_grad():
        assert (back(ids) - ours).abs().max().item() < 1e-5


@pytest.mark.parametrize("recipe", ["pretrain-kjv.yaml", "quickstart.yaml"])
def test_the_default_pretraining_recipe_trains_a_model_transformers_reads_with_the_same_logits(tmp_path, recipe):
    """The bundled recipes' pretraining (Muon, QK-norm on the 1m preset), a few real optimiser steps, then
    export: the architecture transformers names (Qwen3, which holds QK-norm) and logits within 1e-4."""
    from foundry.config import config_from_dict, load_config
    from foundry.model.llama import Llama
    from foundry.pipeline import _substitute, load_recipe
    from foundry.train.optim import build_optimizer
    from foundry.train.pretrain import PretrainConfig, build_model_config
    from foundry.utils.bundled import bundled_root

    path = bundled_root() / "recipes" / recipe
    if recipe == "quickstart.yaml":
        stage = next(s for s in load_recipe(path).stages if s.name == "pretrain")
        cfg = config_from_dict(PretrainConfig, _substitute(stage.config, {"out": "/r", "stage:data_general": "/d",
                                                                          "stage:tokenizer": "/t"}), recipe)
    else:
        cfg = load_config(PretrainConfig, path)
    assert cfg.train.optimizer == "muon" and cfg.model.qk_norm
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = Llama(build_model_config(cfg.model, tok, cfg.train.block_size))
    optimizer = build_optimizer(model, cfg.train)
    ids = torch.randint(0, tok.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()
    out = export_hf(model.eval(), tok, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (model(ids) - _hf_logits(hf, ids)).abs().max().item() < 1e-4
