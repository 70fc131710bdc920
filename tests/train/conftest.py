import pytest
import torch

from foundry.checkpoints import save_checkpoint
from foundry.model.encoder import Encoder, encoder_config_from_preset

from tests.helpers.files import write_jsonl
from tests.helpers.labelled_task import task
from tests.helpers.serve_fixtures import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory):
    """A tiny encoder (`enc`) and decoder (`dec`) checkpoint and the two-topic task's train / val files
    (finetune, transfer)."""
    root = tmp_path_factory.mktemp("ft")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    enc = Encoder(encoder_config_from_preset("bert-test", vocab_size=tok.vocab_size + 1, mask_token_id=tok.vocab_size))
    save_checkpoint(root / "enc", enc, tok, meta={"stage": "test", "step": 0})
    save_checkpoint(root / "dec", tiny_model(tok), tok, meta={"stage": "test", "step": 0})
    write_jsonl(root / "train.jsonl", task(40, 0))
    write_jsonl(root / "val.jsonl", task(20, 1))
    return root
