"""GGUF in and out (`foundry export --format gguf`, `foundry import FILE.gguf`): tiny Llama (tied and untied),
Qwen2 (q/k/v biases) and Qwen3 (q/k norm) models built with transformers, imported to foundry, written as
f16 and q8_0 GGUF; gguf's reader sees llama.cpp's metadata, transformers' GGUF loader gets the same logits
and token ids, `foundry import` reads the file back; bad files are refused in one line with nothing written.
Then every other family (Llama 3.x / linear / YaRN rope, Gemma 2 and 3, Phi-3 with partial rotary and longrope,
OLMo 2, SmolLM3, a Qwen3 sliding window) with its own llama.cpp architecture, tensor names and metadata, read back
by `foundry import` and, where it has the architecture, transformers' loader; and the switches llama.cpp hard-codes
otherwise are refused on export. docs/GGUF.md quotes the measured differences.

Measured on these models (max |logit difference| against the foundry checkpoint, logits up to ~4):
f16 0.0024-0.0046 (bound 1e-2), q8_0 0.057-0.103 (bound 0.25); foundry's own import of the file gives
the same numbers as transformers' loader.
"""

import contextlib
import json
import re

import numpy as np
import pytest
import torch

from foundry.checkpoints import import_hf, load_model, load_start, save_checkpoint, weights_fingerprint
from foundry.cli import main as cli
from foundry.errors import CheckpointError
from foundry.model.gguf import gguf_to_hf, hf_to_gguf

from tests.helpers.hf_models import VOCAB, foreign_tokenizer_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT = "the cat sat on the mat, and the dog ran after it: café 日本 <|im_end|>\n"
F16_BOUND, Q8_BOUND = 1e-2, 0.25  # q8_0 measured 0.057-0.103 here: bound set at ~2.5x the largest
CASES = {  # name -> (transformers family, tied embeddings, GGUF architecture)
    "llama-tied": ("llama", True, "llama"),
    "llama-untied": ("llama", False, "llama"),
    "qwen2": ("qwen2", False, "qwen2"),
    "qwen3": ("qwen3", True, "qwen3"),
}


def _tokenizer(directory):
    """tests.helpers.hf_models' byte-level BPE (<s>, </s>, <|im_end|> as ids 0..2) with a ChatML template (in
    chat_template.jinja, where transformers 5 saves it) and two stop ids: end of text and end of turn."""
    foreign_tokenizer_dir(directory)
    (directory / "chat_template.jinja").write_text(CHATML)
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 2]}))


def _hf_model(family, tie):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1, rope_theta=5000.0)
    cfg, cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
                "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[family]
    torch.manual_seed(0)
    extra = {"qwen3": {"head_dim": 16}, "mistral": {"sliding_window": 64}}.get(family, {})
    model = cls(cfg(**common, **extra)).eval()
    with torch.no_grad():  # biases are zero and norms one at init: make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.5 if name.endswith(".bias") else 0.1)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """A foundry checkpoint imported from a transformers model, and its f16 and q8_0 GGUF exports."""
    family, tie, arch = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = root / "hf"
    _hf_model(family, tie).save_pretrained(hf_dir)
    _tokenizer(hf_dir)
    model, tok = import_hf(hf_dir)
    save_checkpoint(root / "ckpt", model, tok, meta={"stage": "test", "step": 0})
    for quant in ("f16", "q8_0"):
        assert cli(["export", str(root / "ckpt"), "--out", str(root / f"model-{quant}.gguf"), "--format", "gguf",
                    "--quant", quant]) == 0
    ids = torch.randint(0, VOCAB, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
    return {"root": root, "hf_dir": hf_dir, "model": model, "tok": tok, "arch": arch, "tie": tie,
            "family": family, "ids": ids, "logits": logits}


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def test_metadata_and_tensor_shapes(case):
    root, arch = case["root"], case["arch"]
    template = json.loads((root / "ckpt" / "tokenizer_config.json").read_text())["chat_template"]
    for quant, matrix_type in (("f16", "F16"), ("q8_0", "Q8_0")):
        reader = gguf.GGUFReader(str(root / f"model-{quant}.gguf"))
        assert _field(reader, "general.architecture") == arch
        assert _field(reader, f"{arch}.block_count") == 2
        assert _field(reader, f"{arch}.context_length") == 128
        assert _field(reader, f"{arch}.embedding_length") == 64
        assert _field(reader, f"{arch}.feed_forward_length") == 96
        assert (_field(reader, f"{arch}.attention.head_count"), _field(reader, f"{arch}.attention.head_count_kv")) \
            == (4, 2)
        assert _field(reader, f"{arch}.rope.freq_base") == 5000.0
        assert _field(reader, f"{arch}.rope.dimension_count") == 16
        assert _field(reader, "tokenizer.chat_template") == template  # the checkpoint's, byte for byte
        assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
        assert (_field(reader, "tokenizer.ggml.eos_token_id"), _field(reader, "tokenizer.ggml.eot_token_id")) \
            == (1, 2)
        assert len(_field(reader, "tokenizer.ggml.tokens")) == VOCAB
        assert _field(reader, "tokenizer.ggml.token_type")[:3] == [3, 3, 3]  # the specials are CONTROL
        tensors = {t.name: t for t in reader.tensors}
        assert tensors["token_embd.weight"].shape.tolist() == [64, VOCAB]  # ggml order: columns first
        assert ("output.weight" in tensors) == (not case["tie"])
        assert tensors["blk.1.attn_k.weight"].shape.tolist() == [64, 32]  # 2 kv heads of 16
        assert tensors["blk.0.ffn_down.weight"].shape.tolist() == [96, 64]
        assert tensors["blk.0.ffn_down.weight"].tensor_type.name == matrix_type
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        assert ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2")
        assert ("blk.0.attn_q_norm.weight" in tensors) == (arch == "qwen3")
        assert len(tensors) == 2 + (not case["tie"]) + 2 * (9 + 3 * (arch == "qwen2") + 2 * (arch == "qwen3"))


@contextlib.contextmanager
def _gguf_loading_without_accelerate():
    """transformers refuses GGUF unless accelerate is installed, which its GGUF path then does not use;
    this environment has no accelerate, so the check is lifted for the call only."""
    import transformers.modeling_utils as mu

    if mu.is_accelerate_available():
        yield
        return
    saved = mu.is_accelerate_available
    mu.is_accelerate_available = lambda *a, **k: True
    try:
        yield
    finally:
        mu.is_accelerate_available = saved


def test_transformers_gguf_loader_matches_the_checkpoint(case):
    root = case["root"]
    # transformers' loader maps no head size for qwen3 (llama.cpp's `attention.key_length`, which we write)
    # and would use Qwen3Config's default of 128, so it is given here.
    extra = {"head_dim": 16} if case["arch"] == "qwen3" else {}
    errors = {}
    for quant in ("f16", "q8_0"):
        with _gguf_loading_without_accelerate():
            hf = transformers.AutoModelForCausalLM.from_pretrained(str(root), gguf_file=f"model-{quant}.gguf",
                                                                   dtype=torch.float32, **extra).eval()
        assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                     "qwen3": "Qwen3ForCausalLM"}[case["arch"]]
        with torch.no_grad():
            errors[quant] = (hf(input_ids=case["ids"]).logits - case["logits"]).abs().max().item()
    assert errors["f16"] < F16_BOUND and errors["q8_0"] < Q8_BOUND, errors
    assert errors["q8_0"] > errors["f16"]  # the 8-bit file is the coarser one: its weights were quantised
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(root), gguf_file="model-f16.gguf")
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == case["tok"].encode(TEXT)


def test_foundry_import_reads_the_gguf_back(case):
    root, tok = case["root"], case["tok"]
    out = root / "back"
    assert cli(["import", str(root / "model-f16.gguf"), "--out", str(out), "--overwrite"]) == 0
    model, back_tok = load_model(out)
    assert model.config.attention_bias == (case["arch"] == "qwen2")
    assert model.config.qk_norm == (case["arch"] == "qwen3")
    assert model.config.tie_embeddings == case["tie"] and model.config.max_seq_len == 128
    with torch.no_grad():
        assert (model(case["ids"]) - case["logits"]).abs().max().item() < F16_BOUND
    assert back_tok.encode(TEXT) == tok.encode(TEXT)
    assert (back_tok.eos_id, back_tok.eot_id, back_tok.pad_id) == (tok.eos_id, tok.eot_id, tok.pad_id) == (1, 2, 1)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == json.loads((root / "ckpt" / "tokenizer_config.json").read_text())["chat_template"]
    assert json.loads((out / "meta.json").read_text())["source_architecture"] == f"GGUF {case['arch']}"
    # a stage's start (`init:`) takes the file too
    start = load_start(root / "model-q8_0.gguf")
    assert weights_fingerprint(root / "model-q8_0.gguf") != weights_fingerprint(root / "model-f16.gguf")
    assert start.kind == "gguf" and start.tokenizer.encode(TEXT) == tok.encode(TEXT)
    with torch.no_grad():
        assert (start.model(case["ids"]) - case["logits"]).abs().max().item() < Q8_BOUND


def test_converter_keeps_a_chat_template_and_stop_ids_both_ways(tmp_path):
    """hf_to_gguf on transformers' own directory (template in chat_template.jinja) and gguf_to_hf back."""
    hf_dir = tmp_path / "hf"
    _hf_model("qwen2", False).save_pretrained(hf_dir)
    _tokenizer(hf_dir)
    out = hf_to_gguf(hf_dir, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(out))
    assert _field(reader, "tokenizer.chat_template") == CHATML
    back = gguf_to_hf(out, tmp_path / "back")
    assert json.loads((back / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    assert json.loads((back / "generation_config.json").read_text())["eos_token_id"] == [1, 2]
    rendered = transformers.AutoTokenizer.from_pretrained(back).apply_chat_template(
        [{"role": "user", "content": "the cat"}], add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"


def test_split_regex_pre_tokenizers_keep_their_llama_cpp_name(tmp_path, capsys):
    """A Qwen2-style tokenizer (split regex, then bytes) is written as pre 'qwen2' and rebuilt with that regex
    (transformers' loader too); a pre-tokenizer llama.cpp has no name for is refused."""
    from tokenizers import Regex, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from foundry.model.gguf.arch import QWEN2_SPLIT

    hf_dir = tmp_path / "hf"
    _hf_model("qwen2", False).save_pretrained(hf_dir)
    hf = foreign_tokenizer_dir(hf_dir)
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.save(str(hf_dir / "tokenizer.json"))
    out = hf_to_gguf(hf_dir, tmp_path / "m.gguf")
    assert _field(gguf.GGUFReader(str(out)), "tokenizer.ggml.pre") == "qwen2"
    text = "the cat 12345 sat;\n\n  on the mat"
    pieces = hf.pre_tokenizer.pre_tokenize_str(text)
    assert len([p for p, _ in pieces if p.isdigit()]) == 5  # digits one by one, unlike GPT-2's split
    rebuilt = HFTokenizer.from_file(str(gguf_to_hf(out, tmp_path / "back") / "tokenizer.json"))
    assert rebuilt.pre_tokenizer.pre_tokenize_str(text) == pieces
    assert rebuilt.encode(text).ids == hf.encode(text).ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert hf_tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text) == pieces
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == hf.encode(text).ids
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(hf_dir / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="pre-tokenizer not recognised"):
        hf_to_gguf(hf_dir, tmp_path / "w.gguf")
    assert not (tmp_path / "w.gguf").exists()


def test_mistral_directory_is_written_as_llama(tmp_path):
    """The converter on a transformers Mistral directory: llama.cpp's `llama` architecture, q/k permuted, the
    context capped to the sliding window, and read back (import undoes the permutation) to transformers' logits."""
    hf_model = _hf_model("mistral", False)
    hf_model.save_pretrained(tmp_path / "hf")
    _tokenizer(tmp_path / "hf")
    out = hf_to_gguf(tmp_path / "hf", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(out))
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.context_length") == 64  # capped to the sliding window: full attention is exact
    model, _ = import_hf(out)
    ids = torch.randint(0, VOCAB, (1, 31), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf_model(input_ids=ids).logits).abs().max().item() < F16_BOUND


def test_foundry_native_checkpoint_round_trips(tmp_path):
    """foundry's own tokenizer (its seven specials) and the default recipes' QK-norm model, through GGUF."""
    from tests.helpers.serve_fixtures import tiny_checkpoint

    model, tok = tiny_checkpoint(tmp_path / "ckpt", qk_norm=True)
    assert cli(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.gguf"), "--format", "gguf"]) == 0
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert _field(reader, "general.architecture") == "qwen3"
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tok.eot_id
    back, back_tok = import_hf(tmp_path / "m.gguf")
    ids = torch.randint(0, tok.vocab_size, (1, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (back(ids) - model(ids)).abs().max().item() < F16_BOUND
    text = "the river town was founded by a cartographer, café 日本 <|user|>"
    assert back_tok.encode(text) == tok.encode(text)
    assert (back_tok.eos_id, back_tok.bos_id, back_tok.pad_id, back_tok.eot_id) == \
        (tok.eos_id, tok.bos_id, tok.pad_id, tok.eot_id)
    assert back_tok.role_id("user") == tok.role_id("user")


# ---- refusals ------------------------------------------------------------------------------------
def _refused(capsys, argv, out):
    capsys.readouterr()
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: error:") and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return err


def _minimal_gguf(path, arch="llama", tokenizer_model="gpt2", tensor_type=None, skip=()):
    """A small hand-written GGUF with the keys import reads before the weights."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (("block_count", 1), ("embedding_length", 32), ("attention.head_count", 2),
                       ("context_length", 64), ("feed_forward_length", 64)):
        if key not in skip:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(["a", "b"])
    w.add_token_merges([])
    w.add_eos_token_id(0)
    if tensor_type is not None:  # two rows of one 32-value block (40 bytes in Q8_1)
        w.add_tensor("token_embd.weight", np.zeros((2, 40), dtype=np.uint8),
                     raw_dtype=getattr(gguf.GGMLQuantizationType, tensor_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_gguf_files_are_refused_in_one_line(tmp_path, capsys):
    q8_1 = _minimal_gguf(tmp_path / "q8_1.gguf", tensor_type="Q8_1")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(q8_1.read_bytes()[:100])  # inside the metadata
    cut_data = tmp_path / "cut_data.gguf"
    cut_data.write_bytes(q8_1.read_bytes()[:-40])  # inside the tensor data (80 bytes + 16 of padding)
    zipped = tmp_path / "zip.gguf"
    zipped.write_bytes(b"PK\x03\x04 a zip archive, not a model " * 10)
    cases = [
        (zipped, "not a GGUF file"),
        (cut, "truncated"),
        (cut_data, "truncated"),
        (_minimal_gguf(tmp_path / "gpt2.gguf", arch="gpt2"),
         "unsupported GGUF architecture 'gpt2'; supported: llama, qwen2, qwen3, gemma2, gemma3, phi3, olmo2, smollm3"),
        (_minimal_gguf(tmp_path / "spm.gguf", tokenizer_model="llama"), "SentencePiece ('llama')"),
        (q8_1, "tensor token_embd.weight has quantisation type Q8_1, which the gguf package cannot dequantise"),
        (_minimal_gguf(tmp_path / "nokey.gguf", skip=("block_count",)), "missing metadata key llama.block_count"),
        (tmp_path / "absent.gguf", "no such GGUF file"),
    ]
    out = tmp_path / "out"
    for path, message in cases:
        err = _refused(capsys, ["import", str(path), "--out", str(out)], out)
        assert str(path) in err and message in err, err
    with pytest.raises(CheckpointError, match="truncated"):
        load_start(cut)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"\(or a \.gguf file\), not a file"):
        load_start(tmp_path / "weights.bin")


def test_export_refusals_and_overwrite(tmp_path, capsys):
    from tests.helpers.serve_fixtures import tiny_checkpoint

    tiny_checkpoint(tmp_path / "relu2", mlp_act="relu2")
    out = tmp_path / "m.gguf"
    err = _refused(capsys, ["export", str(tmp_path / "relu2"), "--out", str(out), "--format", "gguf"], out)
    assert f"{out}: config.json: hidden_act 'relu2' has no GGUF equivalent" in err and ".tmp" not in err
    err = _refused(capsys, ["export", str(tmp_path / "relu2"), "--out", str(out), "--quant", "q8_0"], out)
    assert "--format gguf only" in err
    tiny_checkpoint(tmp_path / "ckpt")
    out.write_bytes(b"precious")
    capsys.readouterr()
    assert cli(["export", str(tmp_path / "ckpt"), "--out", str(out), "--format", "gguf"]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    taken = tmp_path / "taken"
    taken.mkdir()
    assert cli(["import", str(out), "--out", str(taken)]) == 1
    assert "already exists" in capsys.readouterr().err and not list(taken.iterdir())
    assert cli(["export", str(tmp_path / "ckpt"), "--out", str(out), "--format", "gguf", "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_stage_starts_from_a_gguf_file(tmp_path):
    """`init: model.gguf`: SFT runs from the file as from the checkpoint it was exported from (f16 weights)."""
    from tests.helpers.files import write_jsonl, write_yaml
    from tests.helpers.posttrain import base_checkpoint, book_chats, tiny_tokenizer

    base_checkpoint(tmp_path / "base", tiny_tokenizer())
    assert cli(["export", str(tmp_path / "base"), "--out", str(tmp_path / "base.gguf"), "--format", "gguf"]) == 0
    write_jsonl(tmp_path / "chats.jsonl", book_chats())
    train = dict(max_steps=2, micro_batch_size=4, block_size=64, lr=3e-3, warmup_steps=1, eval_every=2,
                 log_every=1, checkpoint_every=2, threads=1, progress=False, device="cpu")
    runs = {}
    for init in ("base", "base.gguf"):
        recipe = write_yaml(tmp_path / f"{init}.yaml", {
            "init": str(tmp_path / init), "out_dir": str(tmp_path / f"sft-{init}"), "train": train,
            "data": str(tmp_path / "chats.jsonl"), "val_data": str(tmp_path / "chats.jsonl")})
        assert cli(["sft", "--config", str(recipe)]) == 0
        runs[init] = json.loads((tmp_path / f"sft-{init}" / "run.json").read_text())
    assert runs["base.gguf"]["parents"]["checkpoint_kind"] == "gguf"
    assert runs["base.gguf"]["results"]["step"] == 2
    assert runs["base.gguf"]["results"]["val/loss"] == pytest.approx(runs["base"]["results"]["val/loss"], rel=1e-3)


# ---- the other families: their own llama.cpp architecture and metadata ----------------------------------------
FAMILY_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
                     pad_token_id=1)
SWA = 8  # shorter than the test sequences (29), so the windows matter where llama.cpp computes them
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, rope_theta=10000.0,
                   original_max_position_embeddings=32)
PHI3_LONGROPE = dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                     short_factor=[1.0, 1.1, 1.3, 1.7], long_factor=[1.0, 2.0, 3.5, 6.0])
# name -> (config class, model class, config kwargs, GGUF architecture, metadata the file must hold, what
# transformers' GGUF loader must be told that it does not read from the file (None: it has no such architecture,
# or ignores a tensor the model needs: rope_freqs, rope_factors_*))
FAMILY_CASES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=LLAMA3_ROPE), "llama", {}, None),
    "llama-linear": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="linear", factor=4.0, rope_theta=10000.0)), "llama",
        {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}, None),
    "llama-yarn": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="yarn", factor=4.0, rope_theta=10000.0, original_max_position_embeddings=32),
        tie_word_embeddings=True),
        "llama", {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.original_context_length": 32}, None),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, sliding_window=SWA, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0), "gemma2",
        {"gemma2.attention.sliding_window": SWA, "gemma2.attn_logit_softcapping": 5.0,
         "gemma2.final_logit_softcapping": 3.0, "gemma2.attention.key_length": 16},
        dict(query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, sliding_window=SWA, query_pre_attn_scalar=16, tie_word_embeddings=False, num_hidden_layers=6,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}), "gemma3",
        {"gemma3.attention.sliding_window": SWA, "gemma3.rope.freq_base": 50000.0},
        dict(query_pre_attn_scalar=16, rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 50000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.75)), "phi3",
        {"phi3.rope.dimension_count": 12, "phi3.attention.sliding_window": 0},
        dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.75))),
    "phi3-longrope": ("Phi3Config", "Phi3ForCausalLM", dict(original_max_position_embeddings=32,
                                                            rope_parameters=PHI3_LONGROPE), "phi3",
                      {"phi3.rope.scaling.original_context_length": 32, "phi3.rope.dimension_count": 8}, None),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(tie_word_embeddings=True), "olmo2", {}, None),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layers=[1, 1, 1, 0]), "smollm3", {}, None),
    "qwen3-window": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        head_dim=16, use_sliding_window=True, sliding_window=64,
        layer_types=["full_attention", "sliding_attention"] * 2),
        "qwen3", {"qwen3.context_length": 64}, None),
}
FAMILY_Q8_BOUND = 0.5  # q8_0 measured 0.067-0.200 on these 4-6-layer models: bound at ~2.5x the largest
MEASURED_FAMILIES: dict[str, dict[str, float]] = {}  # filled by the test; docs/GGUF.md quotes a run of it


def _family_model(name, **override):
    cfg_name, cls_name, extra = FAMILY_CASES[name][:3]
    hf = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**{**FAMILY_COMMON, **extra, **override}))
    torch.manual_seed(0)
    offset = name.startswith("gemma")  # (1 + w) norms store w around 0
    with torch.no_grad():
        for key, p in hf.named_parameters():
            if "norm" in key:  # non-trivial norms and no zero biases, so a wrong switch or shift shows
                p.copy_((0.0 if offset else 1.0) + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return hf.eval()


@pytest.mark.parametrize("name", list(FAMILY_CASES))
def test_family_has_its_own_architecture_and_reads_back(tmp_path, name):
    """Each family's file: llama.cpp's architecture, tensor names and metadata for it (gguf's reader); `foundry
    import` of it gives the checkpoint's logits (f16 within 1e-2, q8_0 within its bound), and so does transformers'
    GGUF loader where it has the architecture."""
    from foundry.model.gguf.arch import ARCHS

    arch_name, keys, hf_kwargs = FAMILY_CASES[name][3:]
    hf = _family_model(name)
    hf.save_pretrained(tmp_path / "hf")
    _tokenizer(tmp_path / "hf")
    model, tok = import_hf(tmp_path / "hf")
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, tok, meta={"stage": "test", "step": 0})
    ids = torch.randint(0, VOCAB, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
        assert (logits - hf(input_ids=ids).logits).abs().max().item() < 1e-4
    errors = {}
    for quant in ("f16", "q8_0"):
        out = tmp_path / f"model-{quant}.gguf"
        assert cli(["export", str(tmp_path / "ckpt"), "--out", str(out), "--format", "gguf", "--quant", quant]) == 0
        back, back_tok = import_hf(out)
        with torch.no_grad():
            errors[quant] = (back(ids) - logits).abs().max().item()
    assert errors["f16"] < F16_BOUND and errors["f16"] < errors["q8_0"] < FAMILY_Q8_BOUND, errors
    assert back.config.family == ARCHS[arch_name].model_type and back_tok.encode(TEXT) == tok.encode(TEXT)

    reader = gguf.GGUFReader(str(tmp_path / "model-f16.gguf"))
    assert _field(reader, "general.architecture") == arch_name
    for key, value in keys.items():
        assert _field(reader, key) == pytest.approx(value), key
    tensors = {t.name: t for t in reader.tensors}
    expected = set(gguf.TENSOR_NAMES[t].format(bid=0) + ".weight" for t in gguf.MODEL_TENSORS[
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)])
    # every tensor is one llama.cpp's architecture lists (gguf.constants), each layer's the same set
    names = {re.sub(r"^blk\.\d+\.", "blk.0.", n) for n in tensors}
    layer_names = {n for n in names if n.startswith("blk.")}
    assert names <= expected, sorted(names - expected)
    assert len(tensors) == len(names - layer_names) + _field(reader, f"{arch_name}.block_count") * len(layer_names)
    if arch_name.startswith("gemma"):  # llama.cpp stores (1 + w): the file's norm is the checkpoint's plus one
        norm = model.state_dict()["model.layers.0.post_attention_layernorm.weight"]
        stored = gguf.quants.dequantize(tensors["blk.0.post_attention_norm.weight"].data, tensors[
            "blk.0.post_attention_norm.weight"].tensor_type)
        assert np.allclose(stored, norm.numpy() + 1.0)
    if name == "llama3":  # Llama 3's bands as per-dimension divisors of the frequencies: 1 (short) .. factor (long)
        freqs = tensors["rope_freqs.weight"].data
        assert freqs.shape == (8,) and freqs[0] == 1.0 and freqs[-1] == pytest.approx(8.0)
    if name == "phi3":  # the fused projections stay fused, as llama.cpp's phi3 reads them
        assert tensors["blk.0.attn_qkv.weight"].shape.tolist() == [64, 64 + 2 * 32]
        assert tensors["blk.0.ffn_up.weight"].shape.tolist() == [64, 2 * 96]
    if name == "phi3-longrope":
        assert tensors["rope_factors_long.weight"].data.tolist() == PHI3_LONGROPE["long_factor"]
        assert tensors["rope_factors_short.weight"].data.tolist() == pytest.approx(PHI3_LONGROPE["short_factor"])
    if name == "olmo2":  # llama.cpp's olmo2 requires `output`: a tied model writes the embedding as it
        assert np.array_equal(tensors["output.weight"].data, tensors["token_embd.weight"].data)
    if hf_kwargs is not None:
        with _gguf_loading_without_accelerate():
            theirs = transformers.AutoModelForCausalLM.from_pretrained(
                str(tmp_path), gguf_file="model-f16.gguf", dtype=torch.float32, **hf_kwargs).eval()
        assert type(theirs).__name__ == type(hf).__name__
        with torch.no_grad():
            errors["transformers"] = (theirs(input_ids=ids).logits - logits).abs().max().item()
        assert errors["transformers"] < F16_BOUND, errors
    MEASURED_FAMILIES[name] = errors
    print(f"\n{name}: {arch_name} " + " ".join(f"{k} {v:.4f}" for k, v in errors.items()))



@pytest.mark.parametrize("name,override,message", [
    ("gemma2", dict(query_pre_attn_scalar=24), "query_pre_attn_scalar 24, where llama.cpp fixes 16"),
    ("gemma2", dict(layer_types=["full_attention", "sliding_attention"] * 2),
     "sliding-window layers [1, 3], where llama.cpp slides on every layer but each 2th ([0, 2])"),
    ("gemma3", dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}),
     "sliding layers' rope base 1000, where llama.cpp fixes 10000"),
    ("gemma3", dict(final_logit_softcapping=3.0),
     "a final soft-cap, which llama.cpp's gemma3 sliding-window graph does not apply"),
    ("smollm3", dict(no_rope_layers=[1, 0, 1, 0]),
     "layers without rope [1, 3], where llama.cpp's smollm3 skips rope on [3]"),
    ("smollm3", dict(no_rope_layers=[1, 1, 1, 0], rope_parameters=LLAMA3_ROPE),
     "Llama 3 rope scaling, whose rope_freqs llama.cpp's smollm3 graph does not apply"),
    ("gemma2", dict(tie_word_embeddings=False), "an untied lm_head, where llama.cpp's gemma2 has no output tensor"),
    ("llama-yarn", dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=10000.0, beta_fast=16.0,
                                             original_max_position_embeddings=32)),
     "YaRN with a non-default attention factor, beta or truncation"),
])
def test_a_family_llama_cpp_cannot_compute_is_refused(tmp_path, capsys, name, override, message):
    _family_model(name, **override).save_pretrained(tmp_path / "hf")
    _tokenizer(tmp_path / "hf")
    model, tok = import_hf(tmp_path / "hf")
    save_checkpoint(tmp_path / "ckpt", model, tok, meta={"stage": "test", "step": 0})
    out = tmp_path / "m.gguf"
    err = _refused(capsys, ["export", str(tmp_path / "ckpt"), "--out", str(out), "--format", "gguf"], out)
    model_type = json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"]
    assert f"{model_type} has no faithful GGUF form" in err and message in err, err
