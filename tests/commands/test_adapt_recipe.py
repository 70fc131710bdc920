"""recipes/adapt.yaml end to end on two tiny open models (Llama and Qwen2, each with its own byte-level BPE
tokenizer and a ChatML chat template, as transformers saves them): every stage's output, the Findings
computed, the Hugging Face export loading in transformers, and one corpus tokenised by both models into two
keyed shard folders side by side."""

import json
from pathlib import Path

import pytest
import torch

from foundry.cli import main as cli
from foundry.data.shards import load_token_index, tokenizer_key
from foundry.data.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "adapt.yaml"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Small sizes so both runs together stay well under two minutes on two CPU cores.
SIZES = ["continue_steps=8", "sft_steps=8", "dpo_steps=4", "eval_tokens=2048", "coverage_chars=50000", "batch=4"]
FAMILIES = {  # family -> (special tokens, bos, eos, vocabulary size)
    "llama": (["<s>", "</s>", "<|im_start|>", "<|im_end|>"], "<s>", "</s>", 384),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|endoftext|>", 448),
}


def _training_text() -> list[str]:
    """A few pages of the bundled corpora, so the tokenizers learn some real merges."""
    pages = []
    for folder in ("domain/pydocs", "general/kjv"):
        for f in sorted((REPO / "data" / folder).glob("*.txt"))[:2]:
            pages.append(f.read_text(encoding="utf-8")[:40_000])
    return pages


def make_hf_model(root: Path, family: str) -> Path:
    """A tiny random `family` model saved by transformers with its own tokenizer and ChatML template."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials, bos, eos, vocab = FAMILIES[family]
    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf_tok.train_from_iterator(_training_text(), trainer=trainer)
    out = root / f"hf_{family}"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(out)
    config_file = out / "tokenizer_config.json"  # the template in tokenizer_config.json, as most hub models have it
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": CHATML}))
    eos_id = hf_tok.token_to_id(eos)
    common = dict(vocab_size=hf_tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, eos_token_id=eos_id,
                  bos_token_id=hf_tok.token_to_id(bos) if bos else eos_id, rope_theta=10000.0)
    if family == "llama":
        config, cls = transformers.LlamaConfig(**common, tie_word_embeddings=True), transformers.LlamaForCausalLM
    else:
        config, cls = transformers.Qwen2Config(**common, tie_word_embeddings=False), transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    cls(config).save_pretrained(out)
    return out


def small_data(root: Path) -> list[str]:
    """Recipe variables pointing at the first lines of the bundled chats, preferences and domain task, and at
    three books of the bundled Bible as replay (the domain corpus stays the whole Python documentation)."""
    import shutil

    root.mkdir()
    kjv = REPO / "data" / "general" / "kjv"
    (root / "kjv").mkdir()
    for f in ["SOURCE.yaml", "LICENSE"] + sorted(p.name for p in kjv.glob("*.txt"))[:3]:
        shutil.copy(kjv / f, root / "kjv" / f)
    files = {"chats": ("post/instructions.jsonl", 48), "chats_val": ("post/instructions_val.jsonl", 16),
             "prefs": ("post/preferences.jsonl", 48), "prefs_val": ("post/preferences_val.jsonl", 32),
             "domain_task": ("eval/pydocs-continuation.jsonl", 64)}
    for var, (name, lines) in files.items():  # the same file names: the findings name the tasks by them
        text = (REPO / "data" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (root / Path(name).name).write_text("".join(text[:lines]), encoding="utf-8")
    return [f"replay={root / 'kjv'}"] + [f"{var}={root / Path(name).name}" for var, (name, _) in files.items()]


def _stage_outputs_exist(run: Path) -> None:
    assert (run / "base" / "model.safetensors").is_file()  # the import
    assert json.loads((run / "coverage" / "coverage.json").read_text())["verdict"] in (
        "well covered", "partly covered", "poorly covered")
    for stage in ("continue", "sft", "dpo"):
        record = json.loads((run / stage / "run.json").read_text())
        assert record["results"]["status"] == "finished" and (run / stage / "checkpoints" / "best").is_dir(), stage
    before_after = json.loads((run / "continue" / "run.json").read_text())["results"]
    assert set(before_after["before"]) == set(before_after["after"]) == {"domain", "replay"}
    results = json.loads((run / "eval" / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["base", "continued", "sft", "dpo"]
    for model in results["models"]:  # every model scored on its own tokenizer's shards, not re-tokenised
        assert {d["source"] for d in model["perplexity"].values()} == {"shards"}
    assert (run / "report" / "report.md").is_file() and (run / "report" / "MODEL_CARD.md").is_file()
    assert (run / "export" / "config.json").is_file()


@pytest.mark.slow
def test_adapt_recipe_on_llama_and_qwen2_sharing_one_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    data = small_data(tmp_path / "data")
    tokenizers = {}
    for family in FAMILIES:
        hf_dir = make_hf_model(tmp_path, family)
        run = tmp_path / f"adapt-{family}"
        code = cli(["run", str(RECIPE), f"model={hf_dir}", f"out_dir={run}", f"corpus={corpus}", *SIZES, *data])
        out = capsys.readouterr().out
        assert code == 0, out[-3000:]
        print(out[out.index("[foundry run] adapt:"):])  # stage times, and the Findings as the run printed them
        _stage_outputs_exist(run)
        # the Findings: computed from the evaluations, each with an interval and a verdict
        findings = json.loads((run / "report" / "findings.json").read_text())["findings"]
        assert [f["id"] for f in findings] == ["domain_bpb_continue", "domain_bpb_adapted", "domain_task",
                                               "forgetting", "preference_accuracy"]
        for f in findings:
            assert f["verdict"] != "not measured" and f["paired"] and f["ci_low"] <= f["ci_high"], f
        assert "Findings (effect towards improvement" in out  # and printed at the end of the run
        # the export loads in transformers and gives the foundry model's logits
        exported = transformers.AutoModelForCausalLM.from_pretrained(run / "export").eval()
        assert exported.config.model_type == family  # the class it came from
        # the model's own chat template went through every stage unchanged, into the HF and GGUF exports
        assert json.loads((run / "export" / "tokenizer_config.json").read_text())["chat_template"] == CHATML
        from gguf import GGUFReader

        field = GGUFReader(str(run / "export_gguf.gguf")).fields["tokenizer.chat_template"]
        assert bytes(field.parts[field.data[0]]).decode() == CHATML
        from foundry.checkpoints import load_model

        mine, tok = load_model(run / "dpo")
        ids = torch.tensor([tok.encode("def f(x): return x")])
        with torch.no_grad():
            assert (exported(input_ids=ids).logits - mine(ids)).abs().max().item() < 1e-4
        assert transformers.AutoTokenizer.from_pretrained(run / "export")("def f").input_ids == tok.encode("def f")
        tokenizers[family] = Tokenizer.load(run / "base")
        assert tokenizers[family].sha256 == Tokenizer.load(run / "export").sha256  # the model's own, kept throughout
    # one corpus, two tokenizers: their shards side by side, each model reading its own
    keys = sorted(tokenizer_key(t.sha256) for t in tokenizers.values())
    assert len(set(keys)) == 2
    for dataset in ("domain", "replay"):
        assert sorted(p.name for p in (corpus / dataset / "tokens").iterdir()) == keys
        for tok in tokenizers.values():
            index = load_token_index(corpus / dataset, tok)
            assert index["tokenizer_sha256"] == tok.sha256 and Path(index["dir"]).name == tokenizer_key(tok.sha256)
    # the second run prepared nothing again: the datasets are the first run's
    second = json.loads((tmp_path / "adapt-qwen2" / ".pipeline" / "data_domain.json").read_text())
    assert second["argv"][:3] == ["data", "prepare", str(REPO / "data" / "domain" / "pydocs")]
    assert not (tmp_path / "adapt-qwen2" / ".pipeline" / "data_domain.previous").exists()


def _dataset(root: Path, texts: list[str]) -> Path:
    """A prepared dataset's files, written directly (what 'foundry data prepare' leaves)."""
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"texts": len(texts)}))
    for split, part in (("train", texts[:-4]), ("val", texts[-4:])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"id": str(i), "source": "t", "text": t}) + "\n"
                                                     for i, t in enumerate(part)))
    return root


def test_a_hugging_face_directory_tokenises_and_a_missing_tokenisation_is_one_line(tmp_path, capsys):
    hf_dir = make_hf_model(tmp_path, "qwen2")
    pages = [p[i:i + 600] for p in _training_text() for i in range(0, 6000, 600)]
    domain, other = _dataset(tmp_path / "domain", pages[:20]), _dataset(tmp_path / "other", pages[20:40])
    # the HF directory's own tokenizer: its folder is named by the hash of its tokenizer.json bytes
    assert cli(["data", "tokenize", str(domain), "--tokenizer", str(hf_dir), "--workers", "1", "--no-progress"]) == 0
    import hashlib

    key = tokenizer_key(hashlib.sha256((hf_dir / "tokenizer.json").read_bytes()).hexdigest())
    assert [p.name for p in (domain / "tokens").iterdir()] == [key]
    # the imported checkpoint keeps that tokenizer: nothing to tokenise again
    assert cli(["import", str(hf_dir), "--out", str(tmp_path / "base")]) == 0
    capsys.readouterr()
    assert cli(["data", "tokenize", str(domain), "--tokenizer", str(tmp_path / "base"), "--no-progress"]) == 0
    assert "already tokenised" in capsys.readouterr().out
    # continual pretraining on a dataset the model's tokenizer never tokenised: one line, the command to run
    config = tmp_path / "continue.yaml"
    config.write_text(json.dumps({"init": str(tmp_path / "base"), "out_dir": str(tmp_path / "run"),
                                  "mixture": [{"name": "domain", "data": str(domain), "weight": 1.0},
                                              {"name": "other", "data": str(other), "weight": 0.0}],
                                  "train": {"max_steps": 1, "block_size": 16, "micro_batch_size": 2}}))
    assert cli(["continue", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other}: no token shards" in err
    assert f"run 'foundry data tokenize {other} --tokenizer <the model>'" in err
    # shards of another tokenizer only: named, with the same command
    assert cli(["tokenizer", "train", str(other), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]) == 0
    assert cli(["data", "tokenize", str(other), "--tokenizer", str(tmp_path / "tok"), "--workers", "1",
                "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["continue", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other}: tokenised with tokenizer " in err and "foundry data tokenize" in err
    assert not (tmp_path / "run").exists()
