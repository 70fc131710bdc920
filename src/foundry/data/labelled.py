"""Labelled text for classification: JSONL `{"text": ..., "label": ...}` per line, or CSV with a header."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from foundry.data.chat import iter_jsonl
from foundry.errors import DataError


@dataclass
class LabelledExample:
    text: str
    label: str
    where: str  # "FILE:LINE", for error messages


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[LabelledExample]:
    """Every example of a JSONL or CSV file (by suffix: .csv is CSV, anything else JSONL); labels as strings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labelled data file not found")
    rows: list[LabelledExample] = []
    if path.suffix.lower() == ".csv":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 text") from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        for field in (text_field, label_field):
            if field not in columns:
                raise DataError(f"{path}:1: no '{field}' column (columns: {', '.join(columns) or 'none'}); "
                                f"set text_field / label_field to the right column names")
        for row in reader:  # line_num: the record's last physical line (a quoted field may span lines)
            rows.append(_example(row.get(text_field), row.get(label_field), f"{path}:{reader.line_num}",
                                 text_field, label_field))
    else:
        for line, obj in iter_jsonl(path, "labelled data file"):
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line}: expected a JSON object with '{text_field}' and '{label_field}'")
            for field in (text_field, label_field):
                if field not in obj:
                    raise DataError(f"{path}:{line}: no '{field}' field (fields: {', '.join(obj) or 'none'}); "
                                    f"set text_field / label_field to the right names")
            rows.append(_example(obj[text_field], obj[label_field], f"{path}:{line}", text_field, label_field))
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def _example(text, label, where: str, text_field: str, label_field: str) -> LabelledExample:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: '{text_field}' must be a non-empty string")
    if label is None or isinstance(label, (dict, list)) or (isinstance(label, str) and not label.strip()):
        raise DataError(f"{where}: '{label_field}' must be a string or a number, got {label!r}")
    return LabelledExample(text, str(label), where)
