"""`foundry import`: tiny Llama / Mistral / Qwen2 models built here (every family: tests/model/test_hf_families.py)
with transformers become foundry checkpoints with the same logits and greedy tokens; unsupported inputs are
refused by name."""

import json
import shutil

import pytest
import torch

from foundry.cli import main as cli
from foundry.data.tokenizer import Tokenizer
from foundry.errors import CheckpointError
from foundry.checkpoints import import_hf
from foundry.serve.generate import generate
from foundry.checkpoints import load_model

from tests.helpers.hf_models import VOCAB, foreign_tokenizer_dir

transformers = pytest.importorskip("transformers")


def _make_hf(tmp_path, arch, tie=False, sharded=False):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1, rope_theta=5000.0)
    if arch == "llama":
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif arch == "mistral":
        cfg, cls = transformers.MistralConfig(**common, sliding_window=64), transformers.MistralForCausalLM
    else:
        cfg, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():  # biases are zero at init; make them matter
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith(".bias") else 0.1)
    out = tmp_path / f"hf_{arch}"
    model.save_pretrained(out, max_shard_size="100KB" if sharded else "5GB")
    foreign_tokenizer_dir(out)
    return model, out


@pytest.mark.parametrize("arch,tie,sharded", [("llama", True, False), ("mistral", False, True),
                                              ("qwen2", False, False)])
def test_import_matches_transformers(tmp_path, arch, tie, sharded):
    hf_model, hf_dir = _make_hf(tmp_path, arch, tie, sharded)
    assert (hf_dir / "model.safetensors.index.json").is_file() == sharded
    out = tmp_path / "ckpt"
    assert cli(["import", str(hf_dir), "--out", str(out)]) == 0
    model, tok = load_model(out)
    assert model.config.attention_bias == (arch == "qwen2")
    assert model.config.max_seq_len == 128  # a sliding window is computed, not avoided by a shorter context
    assert model.config.sliding_window == (64 if arch == "mistral" else 0)
    ids = torch.randint(0, VOCAB, (2, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = (model(ids) - hf_model(input_ids=ids).logits).abs().max().item()
    assert err < 1e-4, err
    # the foreign tokenizer came along as is, with its own special tokens
    assert (out / "tokenizer.json").read_text() == (hf_dir / "tokenizer.json").read_text()
    assert tok.eos_id == 1 and tok.bos_id == 0 and tok.eot_id == 2
    prompt = tok.encode("the cat sat on")
    mine = list(generate(model, tok, prompt, max_new_tokens=15, temperature=0, stop_ids=[]))
    theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False, eos_token_id=None,
                               pad_token_id=1)[0, len(prompt):].tolist()
    assert mine == theirs and len(mine) == 15
    # and round-trips: export the imported checkpoint, transformers loads it, same logits
    assert cli(["export", str(out), "--out", str(tmp_path / "back")]) == 0
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert (again(input_ids=ids).logits - hf_model(input_ids=ids).logits).abs().max().item() < 1e-4


def test_imported_tokenizer_reloads(tmp_path):
    _, hf_dir = _make_hf(tmp_path, "llama")
    _, tok = import_hf(hf_dir)
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert (again.eos_id, again.bos_id, again.eot_id) == (tok.eos_id, tok.bos_id, tok.eot_id)
    assert again.sha256 == tok.sha256


def _refusal(tmp_path, hf_dir, capsys):
    out = tmp_path / "out"
    capsys.readouterr()  # drop transformers' progress bars from save_pretrained
    assert cli(["import", str(hf_dir), "--out", str(out)]) == 1
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("foundry: error:") and err.count("\n") == 1
    return err


def test_import_refuses_unsupported_inputs(tmp_path, capsys):
    _, hf_dir = _make_hf(tmp_path, "llama")
    cfg_path = hf_dir / "config.json"
    original = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**original, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert "unsupported architecture GPT2LMHeadModel" in _refusal(tmp_path, hf_dir, capsys)

    scaled = {**original, "rope_parameters": {"rope_type": "proportional", "rope_theta": 5e5, "factor": 8.0}}
    cfg_path.write_text(json.dumps(scaled))
    assert "rope scaling 'proportional' is not supported" in _refusal(tmp_path, hf_dir, capsys)

    partial = {**original, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5,
                                               "partial_rotary_factor": 0.5}}
    cfg_path.write_text(json.dumps(partial))
    assert "partial_rotary_factor 0.5 is supported for Phi-3 only" in _refusal(tmp_path, hf_dir, capsys)

    cfg_path.write_text(json.dumps(original))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("precious")
    assert cli(["import", str(hf_dir), "--out", str(taken)]) == 1
    assert "already exists" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "precious"
    (hf_dir / "model.safetensors").rename(hf_dir / "elsewhere.safetensors")
    assert "missing weights file model.safetensors" in _refusal(tmp_path, hf_dir, capsys)
    (hf_dir / "pytorch_model.bin").write_bytes(b"not read")
    assert "never unpickles" in _refusal(tmp_path, hf_dir, capsys)


def test_import_refuses_missing_shard_and_mismatched_weights(tmp_path, capsys):
    _, hf_dir = _make_hf(tmp_path, "mistral", sharded=True)
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    backup = tmp_path / "shard.bak"
    shutil.move(hf_dir / shard, backup)
    assert f"shard file(s) missing: {shard}" in _refusal(tmp_path, hf_dir, capsys)
    shutil.move(backup, hf_dir / shard)
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    assert "weights do not fit the config (missing" in _refusal(tmp_path, hf_dir, capsys)
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\."):
        import_hf(hf_dir)
