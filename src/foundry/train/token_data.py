"""The data of the pretraining stages (next-token and masked-LM): a tokenised dataset read through the shards of
the recipe's tokenizer, with the validation split they evaluate on, and the lineage their run records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from foundry.errors import ConfigError


@dataclass
class TokenDataset:
    tokenizer: object  # foundry.data.tokenizer.Tokenizer
    tokens: Path  # this tokenizer's shards of the dataset
    index: dict

    @property
    def val_bytes_per_token(self) -> float | None:
        val = self.index["splits"]["val"]
        return val["bytes"] / max(1, val["tokens"]) if val.get("bytes") else None


def open_token_dataset(data: str, tokenizer_path: str) -> TokenDataset:
    """The tokenizer and its shards of `data`; a dataset without a 'val' split is a one-line error."""
    from foundry.data.shards import check_tokenizer_matches, load_token_index
    from foundry.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path)
    tokens = check_tokenizer_matches(data, tokenizer)
    index = load_token_index(tokens)
    if "val" not in index["splits"]:
        raise ConfigError(f"{index['dir']}: no 'val' split to evaluate on; re-run 'foundry data prepare'")
    return TokenDataset(tokenizer, tokens, index)


def open_pretraining_run_dir(runner, data: str, tokenizer_path: str, tokenizer) -> Path:
    """`runner.open_run_dir` with the dataset and tokenizer as parents, and the dataset's manifest recorded when
    there is one (the shards are what is read)."""
    parents = {"dataset": str(Path(data).resolve()), "tokenizer": str(Path(tokenizer_path).resolve())}
    manifest = Path(data) / "manifest.json"
    return runner.open_run_dir(parents, {Path(data).name: manifest} if manifest.is_file() else {},
                               tokenizer=tokenizer)
