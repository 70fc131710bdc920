"""Property-based tests (hypothesis) for the parsers and the round-trips every stage relies on.

- Every reader of user files (JSONL corpora, text corpora, chat JSONL, preference JSONL, recipes with
  command-line overrides, rubrics, rating sheets, eval tasks) raises nothing but FoundryError on any bytes
  or any JSON/YAML structure: a bad file is a one-line message, never a traceback.
- The tokenizer round-trips any text exactly; the chat mask covers exactly each assistant turn's content
  and its `<|end|>`, and the mask-derived targets supervise exactly those tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundry.errors import FoundryError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

# JSON values, nested a little; keys and strings lean towards the names the parsers look for.
NAMES = ["text", "messages", "role", "content", "prompt", "chosen", "rejected", "context", "choices", "answer",
         "checker", "type", "value", "values", "pattern", "split", "id", "chat", "system", "user", "assistant",
         "fewshot", "test", "exact", "include", "regex", "exclude", "all", "ignore_case"]
texts = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=5)),
                           max_leaves=12)
records = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=6)


def jsonl_bytes():
    """Lines that are JSON records, JSON of any shape, or any bytes at all."""
    line = st.one_of(records.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=40),
                     st.text(max_size=40))
    return st.lists(line, max_size=5).map(
        lambda lines: b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def only_foundry_errors(fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):  # readers that stream
            list(result)
    except FoundryError as exc:
        assert str(exc).strip(), "an empty error message"  # (the CLI prints it on one line: see test_malformed_inputs)


@SETTINGS
@given(data=jsonl_bytes(), bad_utf8=st.sampled_from(["error", "skip"]))
def test_corpus_readers_raise_only_foundry_errors(scratch, data, bad_utf8):
    from foundry.data.sources import ReadStats, read_jsonl, read_txt

    path = scratch / "corpus.jsonl"
    path.write_bytes(data)
    only_foundry_errors(read_jsonl, path, "text", bad_utf8, ReadStats())
    txt = scratch / "corpus.txt"
    txt.write_bytes(data)
    for layout in ("file", "blankline", "line", "formfeed"):
        only_foundry_errors(read_txt, txt, layout, bad_utf8, ReadStats())


@SETTINGS
@given(data=jsonl_bytes())
def test_jsonl_readers_raise_only_foundry_errors(scratch, data):
    """Chat JSONL, preference JSONL, eval task files and bake-off prompt files."""
    from foundry.data.chat import read_chat_jsonl
    from foundry.data.prefs import read_preferences
    from foundry.eval.bakeoff.rubric import load_prompts
    from foundry.eval.tasks import load_task

    path = scratch / "records.jsonl"
    path.write_bytes(data)
    only_foundry_errors(read_chat_jsonl, path)
    only_foundry_errors(read_preferences, path)
    only_foundry_errors(read_preferences, path, allow_empty=True)
    only_foundry_errors(load_task, path)
    criteria = [{"name": "facts", "type": "must_include", "from_prompt": "required"},
                {"name": "sim", "type": "reference_similarity", "from_prompt": "reference"}]
    only_foundry_errors(load_prompts, path, criteria)


@SETTINGS
@given(messages=json_values, record=records)
def test_chat_and_preference_validators_on_any_structure(messages, record):
    from foundry.data.chat import validate_messages
    from foundry.data.prefs import parse_preference

    only_foundry_errors(validate_messages, messages, "x.jsonl:1")
    only_foundry_errors(validate_messages, messages, "x.jsonl:1", need_assistant=False)
    only_foundry_errors(parse_preference, {**record, "messages": messages} if record.get("messages") else record,
                        "x.jsonl:1", 1)


@SETTINGS
@given(spec=json_values, pattern=st.text(max_size=20))
def test_eval_checker_validation_on_any_structure(spec, pattern):
    from foundry.eval.tasks import validate_checker

    only_foundry_errors(validate_checker, spec, "t.jsonl:1")
    only_foundry_errors(validate_checker, {"type": "regex", "pattern": pattern}, "t.jsonl:1")


# recipes: YAML of any shape (or any bytes), then dotted overrides of any text
yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                                     st.sampled_from(["train", "model", "lr", "max_steps", "preset", "test"]),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(
                                                       ["out_dir", "data", "tokenizer", "model", "train", "preset",
                                                        "lr", "max_steps", "seed", "block_size", "overwrite"]),
                                                       inner, max_size=4)), max_leaves=10)
override_words = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.lr", "train.max_steps", "model.preset", "train",
                                                        "out_dir", "model.n_layer.x", "a..b", ""]),
              st.text(max_size=12)),
    st.text(max_size=20))


@SETTINGS
@given(doc=st.one_of(yaml_values.map(lambda v: yaml.safe_dump(v).encode()), st.binary(max_size=60)),
       overrides=st.lists(override_words, max_size=3))
def test_recipe_loader_with_overrides_raises_only_foundry_errors(scratch, doc, overrides):
    from foundry.config import load_config
    from foundry.train.dpo import DPOConfig
    from foundry.train.pretrain import PretrainConfig

    path = scratch / "recipe.yaml"
    path.write_bytes(doc)
    for cls in (PretrainConfig, DPOConfig):
        only_foundry_errors(load_config, cls, path, overrides)


@SETTINGS
@given(doc=st.one_of(yaml_values.map(lambda v: yaml.safe_dump({"criteria": v}).encode()),
                     st.lists(st.dictionaries(st.sampled_from(["name", "type", "scale", "weight", "patterns",
                                                               "min_words", "max_words", "metric", "match"]),
                                              json_values, max_size=4), max_size=3)
                     .map(lambda c: yaml.safe_dump({"criteria": c}).encode()),
                     st.binary(max_size=60)))
def test_rubric_loader_raises_only_foundry_errors(scratch, doc):
    from foundry.eval.bakeoff.rubric import load_rubric

    path = scratch / "rubric.yaml"
    path.write_bytes(doc)
    only_foundry_errors(load_rubric, path)


@SETTINGS
@given(doc=st.one_of(yaml_values.map(lambda v: yaml.safe_dump(v).encode()),
                     st.dictionaries(st.sampled_from(["license", "origin", "collected", "txt_split", "name"]),
                                     json_values, max_size=4).map(lambda v: yaml.safe_dump(v).encode()),
                     st.binary(max_size=60)))
def test_corpus_sidecar_reader_raises_only_foundry_errors(scratch, doc):
    from foundry.data.sources import read_sidecar

    path = scratch / "SOURCE.yaml"
    path.write_bytes(doc)
    only_foundry_errors(read_sidecar, path)


KEY = {"key": {"R00000a": {"model": "m", "prompt_id": "p1"}, "R00000b": {"model": "n", "prompt_id": "p1"}}}
CRITERIA = [{"name": "accuracy", "type": "human", "scale": [1, 5]}]
cells = st.one_of(st.sampled_from(["R00000a", "R00000b", "R0000zz", "1", "5", "9", "-1", "", "3.5", "x", "accuracy",
                                   "blind_id", "rater"]), st.text(max_size=6))


@SETTINGS
@given(rows=st.lists(st.lists(cells, max_size=5), max_size=5), junk=st.binary(max_size=30),
       header=st.booleans())
def test_rating_sheet_reader_raises_only_foundry_errors(scratch, rows, junk, header):
    import csv
    import io

    from foundry.eval.bakeoff.sheet import read_ratings

    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(["blind_id", "prompt_id", "accuracy", "rater"])
    writer.writerows(rows)
    path = scratch / "sheet.csv"
    path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass") + junk)
    only_foundry_errors(read_ratings, path, KEY, CRITERIA)


LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
                "intermediate_size": 128, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu"}
HF_KEYS = [*LLAMA_CONFIG, "head_dim", "rope_scaling", "rope_parameters", "sliding_window", "use_sliding_window",
           "max_window_layers", "attention_bias", "mlp_bias", "initializer_range"]


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(HF_KEYS), st.one_of(json_values, st.integers(-5, 10**6),
                                                                    st.sampled_from(["llama", "qwen2", "mistral"])),
                               max_size=4))
def test_hf_config_mapping_raises_only_foundry_errors(changes):
    from foundry.model.hf import config_from_hf

    only_foundry_errors(config_from_hf, {**LLAMA_CONFIG, **changes}, Path("hf/config.json"))


MODEL_KEYS = ["vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "head_dim",
              "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "attention_bias", "init_std"]


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(MODEL_KEYS + ["extra"]), st.one_of(json_values, st.integers(-3, 99)),
                               max_size=3), junk=st.one_of(st.none(), st.binary(max_size=20)))
def test_checkpoint_model_config_reader_raises_only_foundry_errors(scratch, changes, junk):
    from foundry.model.llama import PRESETS
    from foundry.checkpoints import load_model_config

    folder = scratch / "ckpt"
    folder.mkdir(exist_ok=True)
    data = json.dumps({**PRESETS["test"], **changes}).encode() if junk is None else junk
    (folder / "model_config.json").write_bytes(data)
    only_foundry_errors(load_model_config, folder)


# ---- round trips ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from foundry.data.tokenizer import Tokenizer

    texts = ["the river town was founded by a cartographer", "café 日本語 naïve — “quotes” 🙂",
             "def f(x):\n\treturn x"]
    return Tokenizer.train(texts * 20, vocab_size=320, min_frequency=2)


@SETTINGS
@given(tokenizer_json=st.one_of(st.none(), st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())),
       special=st.one_of(st.none(), json_values, st.dictionaries(st.sampled_from(["eos", "bos", "pad", "eot", "user"]),
                                                                   st.one_of(texts, st.sampled_from(["<|bos|>"])))))
def test_tokenizer_loader_raises_only_foundry_errors(tokenizer, scratch, tokenizer_json, special):
    from foundry.data.tokenizer import Tokenizer

    folder = scratch / "tok"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_bytes(tokenizer._json.encode() if tokenizer_json is None else tokenizer_json)
    (folder / "tokenizer_config.json").write_text(json.dumps({"foundry_special_tokens": special}))
    only_foundry_errors(Tokenizer.load, folder)


@SETTINGS
@given(text=st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.vocab_size for i in ids)


content = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20) | \
    st.sampled_from(["", " ", "\n", "a<|end|>b", "<|assistant|>", "<|user|>hi", "naïve 日本"])
message_lists = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), content), min_size=1, max_size=5)


@SETTINGS
@given(turns=message_lists, system=st.one_of(st.none(), content), generation_prompt=st.booleans())
def test_chat_mask_covers_exactly_the_assistant_turns(tokenizer, turns, system, generation_prompt):
    from foundry.data.chat import END, assistant_loss_targets, render_chat, render_text

    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": r, "content": c} for r, c in turns]
    ids, mask = render_chat(tokenizer, messages, add_generation_prompt=generation_prompt)
    text, _ = render_text(messages, generation_prompt)
    assert len(ids) == len(mask) and tokenizer.decode(ids) == text
    # the supervised tokens, run by run, decode to each assistant turn's content + <|end|>, in order
    runs, current = [], []
    for token, supervised in zip(ids, mask):
        if supervised:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    expected = [m["content"] + END for m in messages if m["role"] == "assistant"]
    assert [tokenizer.decode(r) for r in runs] == expected
    # special tokens split the text before BPE, so each run is exactly that turn encoded on its own
    assert runs == [tokenizer.encode(e) for e in expected]
    targets = assistant_loss_targets(ids, mask)
    assert [t for t in targets if t != -100] == [ids[i + 1] for i in range(len(ids) - 1) if mask[i + 1]]
