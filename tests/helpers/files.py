"""Writing the small input files tests hand to foundry: JSON lines and YAML recipes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
