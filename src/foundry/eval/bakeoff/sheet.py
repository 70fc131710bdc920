"""The blinded rating sheet for human raters, its key, reading a filled sheet back, and un-blinding ratings."""

from __future__ import annotations

import csv
import io
import random
import secrets
from collections import defaultdict
from pathlib import Path

from foundry.errors import DataError


SHEET_FIXED = ("blind_id", "prompt_id", "prompt", "output")


# ---- the blinded rating sheet ----------------------------------------------------------------------
def human_criteria(criteria: list[dict]) -> list[dict]:
    return [c for c in criteria if c["type"] == "human"]


def blind(outputs: list[dict], prompts: list[dict], criteria: list[dict],
          secret: str | None = None, previous: dict | None = None) -> tuple[str, dict]:
    """(rating sheet CSV text, key): a random blind id per answer, rows shuffled, no model names.

    The ids and the order come from `secret`, drawn fresh from the operating system for each bake-off
    and stored only in the key, so nobody can rebuild the key from the config (its seed is public).
    `previous`: the key of an earlier run into the same directory (a resumed bake-off); its secret is
    kept, and so is the id of every answer whose text did not change, so ratings already given stay
    with their answers."""
    known = {}
    if previous:
        secret = previous["secret"]
        known = {(v["model"], v["prompt_id"], v.get("fp")): bid for bid, v in previous["key"].items()}
    secret = secret if secret is not None else secrets.token_hex(16)
    rng = random.Random(f"bakeoff-blind-{secret}")
    by_id = {p["id"]: p for p in prompts}
    ids: set[str] = set(known.values())
    rows = []
    for o in outputs:
        bid = known.get((o["model"], o["prompt_id"], o.get("fp")))
        if bid is None:
            while (bid := f"R{rng.randrange(16 ** 6):06x}") in ids:
                pass
        ids.add(bid)
        rows.append((bid, o))
    rng.shuffle(rows)
    human = [c["name"] for c in human_criteria(criteria)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*SHEET_FIXED, *human, "comments"])
    for bid, o in rows:
        writer.writerow([bid, o["prompt_id"], by_id[o["prompt_id"]]["prompt"], o["output"], *[""] * len(human), ""])
    key = {"secret": secret, "scales": {c["name"]: c["scale"] for c in human_criteria(criteria)},
           "key": {bid: {"model": o["model"], "prompt_id": o["prompt_id"], **({"fp": o["fp"]} if "fp" in o else {})}
                   for bid, o in rows}}
    return buf.getvalue(), key


def read_ratings(path: str | Path, key: dict, criteria: list[dict]) -> dict:
    """Validate a filled sheet and un-blind it: {(model, prompt_id): {criterion: mean over raters}}."""
    return per_answer_means(read_sheet(path, key, criteria), key)


def per_answer_means(raters: dict, key: dict) -> dict:
    """{(model, prompt_id): {criterion: mean over the raters who scored it}}, as `summarise` reads it."""
    collected: dict = {}
    for items in raters.values():
        for bid, rating in items.items():
            owner = key["key"].get(bid)
            if owner is None:
                continue
            cell = collected.setdefault((owner["model"], owner["prompt_id"]), {})
            for name, value in rating.get("scores", {}).items():
                cell.setdefault(name, []).append(value)
    return {k: {c: sum(v) / len(v) for c, v in crit.items()} for k, crit in collected.items()}


def read_sheet(path: str | Path, key: dict, criteria: list[dict]) -> dict:
    """Validate a filled sheet: {rater: {blind_id: {"scores": {criterion: int}, "comments": str}}}.

    A sheet without a `rater` column (or a row with it empty) is rated by "sheet"; an answer with no
    score at all is left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: rating sheet not found")
    human = human_criteria(criteria)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets often add a byte-order mark
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; export the sheet as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty rating sheet") from None
    header = [h.strip() for h in header]
    missing = [c for c in ["blind_id"] + [c["name"] for c in human] if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; use the rating_sheet.csv that bakeoff wrote")
    col = {h: i for i, h in enumerate(header)}
    collected: dict = defaultdict(dict)
    line = reader.line_num
    for row in reader:
        start, line = line + 1, reader.line_num  # a quoted answer may span several lines
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{start}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        bid = row[col["blind_id"]].strip()
        if bid not in key["key"]:
            raise DataError(f"{where}: blind id '{bid}' is not in the blind key; this row does not belong to "
                            "this bake-off's sheet")
        rater = (row[col["rater"]].strip() if "rater" in col else "") or "sheet"
        if bid in collected[rater]:
            raise DataError(f"{where}: blind id '{bid}' rated twice{f' by {rater}' if rater != 'sheet' else ''}")
        scores = {}
        for c in human:
            cell = row[col[c["name"]]].strip()
            if not cell:
                continue
            lo, hi = c["scale"]
            try:
                value = int(cell)
            except ValueError:
                value = None
            if value is None or not lo <= value <= hi:
                raise DataError(f"{where}: '{c['name']}' score {cell!r} is not an integer on the scale {lo}..{hi}")
            scores[c["name"]] = value
        comments = row[col["comments"]].strip() if "comments" in col else ""
        collected[rater][bid] = {"scores": scores, "comments": comments}
    # an answer nobody scored stays unrated (but is still counted as seen, for the twice-rated check)
    return {r: {b: v for b, v in items.items() if v["scores"] or v["comments"]} for r, items in collected.items()}
