"""A model's own chat template, everywhere: foundry renders the ids transformers' `apply_chat_template` gives
(ChatML, Llama 3 headers, Gemma turns, Phi-3, Mistral [INST]; with and without a system prompt; multi-turn),
derives the assistant mask for any template (what each assistant turn adds, its end-of-turn included), keeps
the template through save/export, stops at the model's own stop tokens, gives a base model foundry's template
with real marker tokens, and an imported instruct model answers through `foundry serve` as transformers does."""

import json
from pathlib import Path

import pytest
import torch

from foundry.checkpoints import import_hf, load_model, save_checkpoint
from foundry.data.chat import Conversation, fit_conversation, render_chat
from foundry.data.tokenizer import Tokenizer
from foundry.errors import DataError
from foundry.model.hf import export_hf

transformers = pytest.importorskip("transformers")

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
SPECIALS = ["<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<bos>", "<eos>",
            "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# family: (template file, bos, eos, what each assistant turn adds after its content: (a middle turn, the last))
FAMILIES = {
    "chatml": ("chatml.jinja", "<s>", "<|im_end|>", ("<|im_end|>\n", "<|im_end|>\n")),
    "llama3": ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>", ("<|eot_id|>", "<|eot_id|>")),
    "gemma": ("gemma3.jinja", "<bos>", "<eos>", ("<end_of_turn>\n", "<end_of_turn>\n")),
    "phi3": ("phi3.jinja", "<s>", "<|endoftext|>", ("<|end|>\n", "<|end|>\n<|endoftext|>")),
    "mistral": ("mistral.jinja", "<s>", "</s>", ("</s>", "</s>")),
}
SYSTEM = {"role": "system", "content": "You are a concise assistant."}
TURNS = [{"role": "user", "content": "Name three primary colors."},
         {"role": "assistant", "content": "Red, blue and yellow."},
         {"role": "user", "content": "And one secondary colour?"},
         {"role": "assistant", "content": "Green."}]


def _vocabulary(specials=tuple(SPECIALS)):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = " ".join(m["content"] for m in TURNS + [SYSTEM]) + " Cutting Knowledge Date Today user model assistant"
    hf.train_from_iterator([text] * 20, trainer=trainer)
    return hf


def _hf_dir(tmp_path, family, generation_eos=None):
    """A tokenizer directory as transformers saves it, with the family's template and special tokens."""
    template, bos, eos, _ = FAMILIES[family]
    out = tmp_path / family
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_vocabulary(), bos_token=bos, eos_token=eos)
    fast.chat_template = (TEMPLATES / template).read_text()
    fast.save_pretrained(out)
    if generation_eos is not None:
        (out / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
    return out, fast


def _foundry_tokenizer(hf_dir, cfg=None):
    return Tokenizer.from_hf_directory(hf_dir, cfg or {}, (hf_dir / "tokenizer.json").read_text())


def _conversations(family):
    with_system = [SYSTEM] + TURNS
    # Mistral's v0.1 template refuses a system role: it is left out there
    return [TURNS[:1], TURNS, TURNS[:3]] + ([] if family == "mistral" else [with_system, with_system[:2]])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ids_equal_apply_chat_template(tmp_path, family):
    hf_dir, fast = _hf_dir(tmp_path, family)
    tok = _foundry_tokenizer(hf_dir)
    assert tok.chat_template.source == fast.chat_template
    for messages in _conversations(family):
        for prompt in ([True, False] if messages[-1]["role"] == "user" else [False]):
            ours, mask = render_chat(tok, messages, add_generation_prompt=prompt)
            theirs = fast.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True,
                                              return_dict=False)
            assert ours == list(theirs), (family, messages, prompt)
            assert len(mask) == len(ours)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mask_is_what_each_assistant_turn_adds(tmp_path, family):
    hf_dir, _ = _hf_dir(tmp_path, family)
    tok = _foundry_tokenizer(hf_dir)
    middle, last = FAMILIES[family][3]
    ids, mask = render_chat(tok, TURNS)
    supervised, run = [], []
    for token, on in zip(ids, mask):
        if on:
            run.append(token)
        elif run:
            supervised.append(tok.decode(run))
            run = []
    if run:
        supervised.append(tok.decode(run))
    assert supervised == ["Red, blue and yellow." + middle, "Green." + last]
    # the end of turn is a stop token, so a tuned model learns to stop where the template ends a turn
    assert tok.decode([tok.eot_id]) == middle.strip("\n") and tok.eot_id in tok.stop_ids


def test_a_template_that_rewrites_the_last_turn_still_gets_its_turns_supervised(tmp_path):
    hf_dir, fast = _hf_dir(tmp_path, "chatml")
    tok = _foundry_tokenizer(hf_dir).with_chat_template((TEMPLATES / "qwen3_like.jinja").read_text(), "qwen3-like")
    ids, mask = render_chat(tok, TURNS)
    assert ids == list(fast.apply_chat_template(TURNS, chat_template=tok.chat_template.source, return_dict=False))
    text = tok.decode([t for t, on in zip(ids, mask) if on])
    assert text == "Red, blue and yellow.<|im_end|>" + "<think>\n\n</think>\n\nGreen.<|im_end|>\n"


def test_a_template_that_cannot_render_names_the_template_and_line(tmp_path):
    hf_dir, _ = _hf_dir(tmp_path, "gemma")
    tok = _foundry_tokenizer(hf_dir)
    bad = Conversation([TURNS[0], TURNS[2], TURNS[1]], "chats.jsonl:7")  # user, user: the template refuses
    with pytest.raises(DataError) as err:
        fit_conversation(tok, bad, 256)
    message = str(err.value)
    assert message.startswith(f"chats.jsonl:7: chat template {hf_dir}")  # the file the template came from
    assert "roles must alternate" in message and "\n" not in message


def test_template_stop_tokens_and_markers_survive_save_and_export(tmp_path):
    hf_dir, fast = _hf_dir(tmp_path, "llama3", generation_eos=[8, 9])  # <|eot_id|>, <|eom_id|>
    tok = _foundry_tokenizer(hf_dir, {"eos_token_id": [8, 9]})
    assert {8, 9} <= set(tok.stop_ids)
    tok.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert again.chat_template.source == fast.chat_template and set(again.stop_ids) == set(tok.stop_ids)
    assert render_chat(again, TURNS) == render_chat(tok, TURNS)


def _tiny_llama(vocab, tie=True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=tie, bos_token_id=0, eos_token_id=4)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_a_base_model_gets_foundry_template_with_real_marker_tokens(tmp_path):
    from foundry.data.chat import FOUNDRY_MARKERS

    hf_dir, fast = _hf_dir(tmp_path, "chatml")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    (hf_dir / "chat_template.jinja").unlink(missing_ok=True)
    config.pop("chat_template", None)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    # a vocabulary without foundry's markers, exactly as large as the embedding, so the embedding must grow
    vocab = _vocabulary([t for t in SPECIALS if t not in FOUNDRY_MARKERS])
    (hf_dir / "tokenizer.json").write_text(vocab.to_str())
    base_vocab = vocab.get_vocab_size()
    hf_model = _tiny_llama(base_vocab, tie=False)
    hf_model.save_pretrained(hf_dir)

    model, tok = import_hf(hf_dir)
    assert tok.chat_template.name == "foundry" and tok.added_tokens
    from foundry.checkpoints import load_tokenizer

    assert load_tokenizer(hf_dir).sha256 == tok.sha256  # `data tokenize --tokenizer HF_DIR` keys its shards alike
    assert all(tok.token_to_id(m) is not None for m in FOUNDRY_MARKERS)
    assert model.config.vocab_size == tok.vocab_size > base_vocab
    ids = torch.randint(0, base_vocab, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(input_ids=ids).logits
        assert (ours[..., :base_vocab] - theirs).abs().max() < 1e-4  # the model's own logits are untouched
        new = [tok.token_to_id(m) for m in tok.added_tokens]
        mean = hf_model.model.embed_tokens.weight.mean(0)
        assert torch.allclose(model.model.embed_tokens.weight[new], mean.expand(len(new), -1))
    ids, mask = render_chat(tok, TURNS)
    assert tok.decode(ids).startswith("<|user|>Name three") and tok.token_to_id("<|end|>") in ids
    # the export carries the template and the grown vocabulary; transformers renders the same ids
    save_checkpoint(tmp_path / "ckpt", model, tok)
    model2, tok2 = load_model(tmp_path / "ckpt")
    export_hf(model2, tok2, tmp_path / "export")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert list(again.apply_chat_template(TURNS, tokenize=True, return_dict=False)) == ids
    card = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert card["foundry_added_tokens"] == tok.added_tokens


def test_imported_instruct_model_answers_through_serve_as_transformers_does(tmp_path):
    """The issue's acceptance check: greedy answers over the OpenAI API equal transformers' with the model's
    own template, token for token, stopping where the model's stop tokens say."""
    from tests.helpers.serve_fixtures import RunningServer

    from foundry.serve.server import ServerSettings, create_app

    openai = pytest.importorskip("openai")
    hf_dir, fast = _hf_dir(tmp_path, "chatml", generation_eos=[4])
    hf_model = _tiny_llama(len(fast))
    hf_model.save_pretrained(hf_dir)
    model, tok = import_hf(hf_dir)
    messages = [SYSTEM, TURNS[0]]
    prompt = fast.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    theirs = hf_model.generate(**prompt, max_new_tokens=24, do_sample=False, eos_token_id=list(tok.stop_ids),
                               pad_token_id=0)[0, prompt["input_ids"].shape[1]:].tolist()
    theirs = [t for t in theirs if t not in tok.stop_ids]  # the stop token ends the answer, and is not in it
    app = create_app(model.eval(), tok, ServerSettings("instruct", api_key="k", max_tokens_limit=64))
    with RunningServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="instruct", messages=messages, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == fast.decode(theirs)  # the same tokens (none skipped on either side)
    assert len(theirs) > 3
    assert reply.usage.prompt_tokens == prompt["input_ids"].shape[1]


def test_serve_answers_400_when_the_model_template_refuses_a_conversation(tmp_path):
    import httpx
    from tests.helpers.serve_fixtures import RunningServer

    from foundry.serve.server import ServerSettings, create_app

    hf_dir, fast = _hf_dir(tmp_path, "mistral")
    hf_model = _tiny_llama(len(fast))
    hf_model.save_pretrained(hf_dir)
    model, tok = import_hf(hf_dir)
    app = create_app(model.eval(), tok, ServerSettings("mistral", max_tokens_limit=8))
    with RunningServer(app) as srv:
        bad = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                         json={"model": "mistral", "messages": [SYSTEM, TURNS[0]], "max_tokens": 4})
        good = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                          json={"model": "mistral", "messages": [TURNS[0]], "max_tokens": 4})
    assert bad.status_code == 400 and "cannot render this conversation" in bad.json()["error"]["message"]
    assert good.status_code == 200
