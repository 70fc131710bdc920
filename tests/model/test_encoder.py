"""The BERT encoder and the sequence classifiers: transformers loads the exports with the same logits, and
`foundry import` reads the encoder back."""

import json

import pytest
import torch

from foundry.checkpoints import load_model, save_checkpoint
from foundry.cli import main as cli
from foundry.model.classifier import classifier_from_model
from foundry.model.encoder import ENCODER_PRESETS, Encoder, encoder_config_from_preset

from tests.helpers.serve_fixtures import tiny_model, tiny_tokenizer

transformers = pytest.importorskip("transformers")


def tiny_encoder(tok, seed=0, **overrides) -> Encoder:
    torch.manual_seed(seed)
    config = encoder_config_from_preset("bert-test", vocab_size=tok.vocab_size + 1, mask_token_id=tok.vocab_size,
                                        **overrides)
    model = Encoder(config)
    with torch.no_grad():  # larger-than-init weights and non-zero biases, so a misplaced tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _ids(tok, B=2, T=29, seed=0):
    return torch.randint(7, tok.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_presets_span_test_size_to_bert_base():
    base = encoder_config_from_preset("bert-base", vocab_size=30522, mask_token_id=103)
    assert 105e6 < base.num_params() < 115e6  # BERT-base: 110M
    assert Encoder(encoder_config_from_preset("bert-test", vocab_size=300, mask_token_id=299)).num_params() == \
        encoder_config_from_preset("bert-test", vocab_size=300, mask_token_id=299).num_params()
    assert set(ENCODER_PRESETS) >= {"bert-test", "bert-base"}


def test_encoder_logits_match_bert_for_masked_lm_and_import_round_trips(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_encoder(tok)
    save_checkpoint(tmp_path / "ckpt", model, tok, meta={"stage": "test", "step": 0})
    assert cli(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"]
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = _ids(tok)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0  # right padding in the second row
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (ours - theirs)[keep].abs().max().item() < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.mask_token == "<|mask|>" and hf_tok.mask_token_id == model.config.mask_token_id
    # and back
    assert cli(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, back_tok = load_model(tmp_path / "back")
    assert isinstance(back, Encoder) and back.config.mask_token_id == model.config.mask_token_id
    with torch.no_grad():
        assert torch.allclose(back(ids), model(ids), atol=1e-5)
    assert back_tok.encode("the river") == tok.encode("the river")


def test_packed_documents_do_not_attend_to_each_other():
    tok = tiny_tokenizer()
    model = tiny_encoder(tok)
    a, b = _ids(tok, 1, 11, seed=1), _ids(tok, 1, 9, seed=2)
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 11 + [1] * 9])
    positions = torch.cat([torch.arange(11), torch.arange(9)])[None]
    with torch.no_grad():
        together = model(packed, position_ids=positions, segment_ids=segments)
        alone_a, alone_b = model(a), model(b)
        changed_b = model(torch.cat([a, _ids(tok, 1, 9, seed=3)], 1), position_ids=positions, segment_ids=segments)
    assert torch.allclose(together[:, :11], alone_a, atol=1e-5)
    assert torch.allclose(together[:, 11:], alone_b, atol=1e-5)
    assert torch.allclose(changed_b[:, :11], alone_a, atol=1e-5)  # the first document never sees the second
    unpacked = model(packed)  # without segments the documents do mix
    assert not torch.allclose(unpacked[:, :11], alone_a, atol=1e-3)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_classifier_logits_match_transformers(tmp_path, kind):
    tok = tiny_tokenizer()
    body = tiny_encoder(tok) if kind == "bert" else tiny_model(tok, seed=1)
    clf = classifier_from_model(body, ["law", "gospel", "psalm"]).eval()
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if "pooler" in name or "classifier" in name or "score" in name:
                p.normal_(0.0, 0.3)
    save_checkpoint(tmp_path / "ckpt", clf, tok, meta={"stage": "test", "step": 0})
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.config.labels == ["law", "gospel", "psalm"]
    assert cli(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = "BertForSequenceClassification" if kind == "bert" else "LlamaForSequenceClassification"
    assert cfg["architectures"] == [expected] and cfg["id2label"]["1"] == "gospel"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = _ids(tok, 3, 17)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, tok.pad_id)  # Llama's head finds the last token by pad_token_id
    with torch.no_grad():
        ours = loaded(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (3, 3)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_import_of_a_transformers_bert_with_wordpiece_tokenizer(tmp_path):
    words = "the river town was founded by a cartographer who drew maps of copper salt and wool".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    hf_tok = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    hf = transformers.BertForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path / "bert")
    hf_tok.save_pretrained(tmp_path / "bert")
    assert cli(["import", str(tmp_path / "bert"), "--out", str(tmp_path / "ckpt")]) == 0
    model, tok = load_model(tmp_path / "ckpt")
    assert isinstance(model, Encoder) and model.config.mask_token_id == 4
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (3, 2, 0)  # [SEP], [CLS], [PAD]
    ids = torch.tensor([[2, 5, 6, 7, 4, 9, 3], [2, 10, 11, 12, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        err = (model(ids, attention_mask=mask) - hf(input_ids=ids, attention_mask=mask).logits)[mask.bool()]
    assert err.abs().max().item() < 1e-4
