"""Today's open architectures as configurations of the one foundry `Llama`: for each family (and rope variant) a
tiny random transformers model is imported, and must give transformers' logits, training loss and greedy tokens
(through the batched, ragged engine, past every sliding window), and export back to the same class with the same
logits. Unsupported architectures are refused in one line that lists the supported ones."""

import json

import pytest
import torch

from foundry.checkpoints import import_hf, load_model, save_checkpoint
from foundry.errors import CheckpointError
from foundry.model.hf import export_hf
from foundry.model.llama import Llama, LlamaConfig, config_from_preset
from foundry.serve.engine import generate_many
from foundry.train.objectives import NextTokenObjective

from tests.helpers.hf_models import VOCAB, foreign_tokenizer_dir

transformers = pytest.importorskip("transformers")

TOL = 1e-4
WINDOW = 8  # every sliding window here is shorter than the test sequences and the generations
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=1)
SCALED = dict(rope_theta=10000.0, original_max_position_embeddings=32)

# name -> (config class, model class, config kwargs)
CASES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, **SCALED))),
    "llama-linear": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="linear", factor=4.0, rope_theta=10000.0))),
    "llama-dynamic": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="dynamic", factor=4.0, rope_theta=10000.0))),
    "llama-yarn": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="yarn", factor=4.0, **SCALED), tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, layer_types=["sliding_attention", "full_attention"] * 2)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}})),
    "phi3-longrope": ("Phi3Config", "Phi3ForCausalLM", dict(original_max_position_embeddings=32, rope_parameters=dict(
        rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5, short_factor=[1.0, 1.1, 1.3, 1.7],
        long_factor=[1.0, 2.0, 3.5, 6.0]))),
    "phi3-window": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW, rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.75))),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layers=[1, 0, 1, 0], use_sliding_window=True,
                                                            sliding_window=WINDOW)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW, head_dim=16)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=WINDOW,
                                                      max_window_layers=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, use_sliding_window=True, sliding_window=WINDOW,
                                                      layer_types=["full_attention", "sliding_attention"] * 2)),
}
MEASURED: dict[str, dict[str, float]] = {}  # filled by the test; docs/MODELS.md quotes a run of it


def _make(tmp_path, name):
    cfg_name, cls_name, extra = CASES[name]
    cfg = getattr(transformers, cfg_name)(**{**COMMON, **extra})
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(cfg).eval()
    offset = name.startswith("gemma")  # (1 + w) norms store w around 0
    with torch.no_grad():  # non-trivial values everywhere, norms and biases included, so a wrong switch shows
        for key, p in hf.named_parameters():
            if "norm" in key:
                p.copy_((0.0 if offset else 1.0) + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.5 if key.endswith(".bias") else 0.1)
    out = tmp_path / "hf"
    hf.save_pretrained(out)
    foreign_tokenizer_dir(out)
    return hf, out


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_family_import_train_generate_export(tmp_path, name):
    hf, hf_dir = _make(tmp_path, name)
    model, tok = import_hf(hf_dir)
    model.eval()
    assert model.config.family == json.loads((hf_dir / "config.json").read_text())["model_type"]
    ids = torch.randint(0, VOCAB, (3, 37), generator=torch.Generator().manual_seed(1))  # 37 > every window and 32
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
        logits_diff = _max_diff(model(ids), theirs)
        projected = model.project(model(ids, return_hidden=True))
    assert logits_diff < TOL, logits_diff
    assert _max_diff(projected, theirs) < TOL

    # 1 training step's loss, then a few AdamW steps must lower it
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}
    objective = NextTokenObjective()
    model.train()
    loss = objective.loss(model, batch)[0] / objective.units(batch)
    with torch.no_grad():
        hf_loss = hf(input_ids=ids, labels=ids).loss
    loss_diff = abs(loss.item() - hf_loss.item())
    assert loss_diff < TOL, loss_diff
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(3):
        optimizer.zero_grad()
        loss = objective.loss(model, batch)[0] / objective.units(batch)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
    assert loss.item() < first
    # a foundry checkpoint keeps every switch (model_config.json) and the weights: reloaded, the same logits
    model, tok = import_hf(hf_dir)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    model, tok = load_model(tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        assert _max_diff(model(ids), theirs) < TOL

    # greedy generation through the batched, ragged engine: prompts of different lengths, past the window; for
    # longrope, two sequences grow past the original context (32) at different steps, where transformers
    # recomputes them with the long factors, and one stays inside it
    lengths = (29, 26, 3) if "longrope" in name else (5, 11, 3)
    prompts = [row[:n].tolist() for row, n in zip(ids, lengths)]
    new = 10
    mine = generate_many(model, tok, prompts, max_new_tokens=new, temperature=0.0, stop_ids=[], max_batch=3)
    for prompt, ours in zip(prompts, mine):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                          pad_token_id=1)[0, len(prompt):].tolist()
        assert ours == ref, (prompt, ours, ref)

    # export: the same transformers class, the same logits
    back = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tok, tmp_path / "back")).eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        export_diff = _max_diff(back(input_ids=ids).logits, theirs)
    assert export_diff < TOL, export_diff
    MEASURED[name] = dict(logits=logits_diff, loss=loss_diff, export=export_diff)
    print(f"\n{name}: logits {logits_diff:.2e} loss {loss_diff:.2e} export {export_diff:.2e} generation equal")


@pytest.mark.parametrize("model_type,arch", [("mixtral", "MixtralForCausalLM"), ("qwen3_moe", "Qwen3MoeForCausalLM"),
                                             ("gpt2", "GPT2LMHeadModel")])
def test_unsupported_architecture_is_one_line_listing_supported(tmp_path, model_type, arch):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": [arch], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": VOCAB, "num_local_experts": 4}))
    with pytest.raises(CheckpointError) as err:
        import_hf(tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"unsupported architecture {arch}" in message
    for supported in ("LlamaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
                      "Olmo2ForCausalLM", "SmolLM3ForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                      "Qwen3ForCausalLM"):
        assert supported in message


def test_config_written_before_the_family_switches_loads_unchanged():
    """model_config.json from an older foundry lacks every family field: it loads as the plain Llama it was."""
    current = config_from_preset("test", qk_norm=True)
    old = {k: v for k, v in current.to_dict().items() if k in (
        "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "head_dim", "max_seq_len",
        "rope_theta", "norm_eps", "tie_embeddings", "attention_bias", "qk_norm", "mlp_act", "init_std")}
    loaded = LlamaConfig.from_dict(old)
    assert loaded == current and loaded.family == "llama" and loaded.sliding_window == 0
    torch.manual_seed(0)
    a = Llama(current)
    b = Llama(loaded)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


def _as_transformers_4(cfg: dict) -> dict:
    """The same model's config.json as transformers 4.x wrote it: rope_theta and rope_scaling at the top
    (Gemma 3: rope_local_base_freq; Phi-3: partial_rotary_factor), no rope_parameters."""
    cfg = dict(cfg)
    params = cfg.pop("rope_parameters")
    if cfg["model_type"] == "gemma3_text":
        cfg["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
        params = params["full_attention"]
    params = dict(params)
    cfg["rope_theta"] = params.pop("rope_theta")
    if "partial_rotary_factor" in params:
        cfg["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    kind = params.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
    return cfg


@pytest.mark.parametrize("name", ["llama3", "llama-yarn", "gemma3", "phi3-longrope"])
def test_transformers_4_config_forms_import_alike(tmp_path, name):
    _, hf_dir = _make(tmp_path, name)
    model, _ = import_hf(hf_dir)
    path = hf_dir / "config.json"
    path.write_text(json.dumps(_as_transformers_4(json.loads(path.read_text()))))
    again, _ = import_hf(hf_dir)
    assert again.config == model.config and model.config.rope_scaling is not None
