"""The ratings store of a bake-off, `OUT/ratings.json`: every rater's scores of every blinded answer.

Both ways of rating feed it: the rating page (`foundry bakeoff rate OUT`) writes one rating at a time, and
a filled CSV sheet (`foundry bakeoff --out OUT --ratings FILLED.csv`) replaces the ratings of the raters
it names. The summary reads only the store.

Layout: `{"kind": "foundry.bakeoff.ratings", "raters": {RATER: {BLIND_ID: {"scores": {CRITERION: int},
"comments": str, "version": int, "updated": ISO time}}}}`.

Safety: every change re-reads the file, applies one rating and rewrites the whole file atomically
(temporary file, fsync, rename) under a lock (a thread lock, and an advisory file lock on
`OUT/.ratings.lock` where the system has one, so a sheet imported while the page runs cannot drop a
rating the page saved meanwhile), so a killed server or a closed tab loses at most the rating being
sent, never one already saved. Two tabs rating the same answer: each change carries the
`version` of the answer it was made on; a change made on an older version is refused (a conflict, 409
on the page) and the tab shows the answer as saved, so no rating is overwritten unseen.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

from foundry.errors import DataError
from foundry.eval.bakeoff.sheet import human_criteria

STORE = "ratings.json"
RATER_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_COMMENT = 4000


class RatingError(DataError):
    """A rating that cannot be saved; `status` is the HTTP status the rating page answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RatingStore:
    def __init__(self, out: str | Path, key: dict, criteria: list[dict]):
        self.out = Path(out)
        self.path = self.out / STORE
        self.key = key["key"]
        self.human = {c["name"]: c for c in human_criteria(criteria)}
        self._lock = threading.Lock()

    # ---- reading ------------------------------------------------------------------------------------
    def load(self) -> dict:
        """{rater: {blind_id: rating}}; empty before the first rating."""
        from foundry.utils.io import read_json

        if not self.path.is_file():
            return {}
        data = read_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("raters"), dict):
            raise DataError(f"{self.path}: not a ratings store (expected {{'raters': {{...}}}})")
        return data["raters"]

    def rater(self, name: str) -> dict:
        return self.load().get(name, {})

    def complete(self, rating: dict | None) -> bool:
        return bool(rating) and all(c in rating.get("scores", {}) for c in self.human)

    # ---- checking -----------------------------------------------------------------------------------
    def check(self, blind_id: str, scores: dict, where: str = "rating") -> dict[str, int]:
        """The scores as integers on their scales, or a RatingError saying what is wrong."""
        if blind_id not in self.key:
            raise RatingError(f"{where}: answer '{blind_id}' is not in this bake-off's sheet", 404)
        if not self.human:
            raise RatingError(f"{where}: this rubric has no human criteria; there is nothing to rate", 409)
        if not isinstance(scores, dict):
            raise RatingError(f"{where}: 'scores' must be a mapping of criterion to score")
        clean = {}
        for name, value in scores.items():
            if name not in self.human:
                raise RatingError(f"{where}: '{name}' is not a human criterion of this rubric "
                                  f"({', '.join(self.human)})")
            lo, hi = self.human[name]["scale"]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise RatingError(f"{where}: '{name}' score {value!r} is not an integer on the scale {lo}..{hi}")
            clean[name] = value
        return clean

    # ---- writing ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """One writer at a time: threads of this process, and other processes (POSIX advisory lock)."""
        with self._lock:
            try:
                import fcntl
            except ImportError:  # no advisory locks here (Windows): one process at a time is the rule
                yield
                return
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / ".ratings.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, raters: dict) -> None:
        from foundry.utils.io import atomic_write_json

        atomic_write_json(self.path, {"kind": "foundry.bakeoff.ratings", "raters": raters})

    def rate(self, rater: str, blind_id: str, scores: dict | None = None, comments: str | None = None,
             version: int | None = None, clear: list[str] | None = None) -> dict:
        """Save one change to `rater`'s rating of `blind_id` and return the rating as stored.

        `version`: the version the change was made on (0 = never rated); a different stored version is a
        conflict (409) and nothing changes. None skips the check (a sheet import)."""
        clean = self.check(blind_id, scores or {})
        for name in clear or []:
            if name not in self.human:
                raise RatingError(f"rating: '{name}' is not a human criterion of this rubric")
        if comments is not None and (not isinstance(comments, str) or len(comments) > MAX_COMMENT):
            raise RatingError(f"rating: 'comments' must be text of at most {MAX_COMMENT} characters")
        with self._locked():
            raters = self.load()
            mine = raters.setdefault(rater, {})
            current = mine.get(blind_id, {"scores": {}, "comments": "", "version": 0})
            if version is not None and version != current["version"]:
                raise RatingError(f"answer {blind_id} was changed in another tab or window since this one "
                                  f"loaded it (version {current['version']}, this tab had {version}); "
                                  "showing the saved rating", 409)
            new_scores = {k: v for k, v in {**current["scores"], **clean}.items() if k not in (clear or [])}
            updated = {"scores": new_scores,
                       "comments": current.get("comments", "") if comments is None else comments,
                       "version": current["version"] + 1,
                       "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            mine[blind_id] = updated
            self._write(raters)
            return updated

    def replace(self, ratings: dict[str, dict[str, dict]]) -> None:
        """Replace the whole ratings of each rater named in `ratings` ({rater: {blind_id: {"scores",
        "comments"}}}), as a filled sheet gives them; other raters' ratings stay."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._locked():
            raters = self.load()
            for rater, items in ratings.items():
                old = raters.get(rater, {})
                raters[rater] = {bid: {"scores": r["scores"], "comments": r.get("comments", ""),
                                       "version": old.get(bid, {}).get("version", 0) + 1, "updated": stamp}
                                 for bid, r in items.items()}
            self._write(raters)


def agreement(raters: dict, key: dict, criteria: list[dict], flag: int = 5) -> dict:
    """Per human criterion Krippendorff's alpha (ordinal) over the answers, and the answers the raters
    disagree on most: spread = (highest - lowest score) / (scale width), averaged over the criteria
    that at least two raters scored."""
    from foundry.eval.agreement import krippendorff_alpha, pairable_values

    human = human_criteria(criteria)
    names = sorted(raters)
    per: dict = {}
    for c in human:
        units = {bid: [raters[r][bid]["scores"][c["name"]] for r in names
                       if c["name"] in raters[r].get(bid, {}).get("scores", {})] for bid in key["key"]}
        alpha = krippendorff_alpha(units, "ordinal")
        per[c["name"]] = {"alpha": None if alpha is None else round(alpha, 4), "metric": "ordinal",
                          "raters": sum(any(c["name"] in r.get("scores", {}) for r in raters[n].values())
                                        for n in names),
                          "answers_rated_twice": sum(len(v) >= 2 for v in units.values()),
                          "pairable_values": pairable_values(units)}
    spreads = []
    for bid, owner in key["key"].items():
        parts, given = [], {}
        for c in human:
            values = {r: raters[r][bid]["scores"][c["name"]] for r in names
                      if c["name"] in raters[r].get(bid, {}).get("scores", {})}
            if len(values) >= 2:
                lo, hi = c["scale"]
                parts.append((max(values.values()) - min(values.values())) / (hi - lo))
                given[c["name"]] = values
        if parts and max(parts) > 0:
            spreads.append({"blind_id": bid, "model": owner["model"], "prompt_id": owner["prompt_id"],
                            "spread": round(sum(parts) / len(parts), 4), "scores": given})
    spreads.sort(key=lambda s: (-s["spread"], s["blind_id"]))
    return {"criteria": per, "raters": names, "disagreements": spreads[:flag],
            "method": "Krippendorff's alpha, ordinal metric, over answers rated by at least two raters "
                      "(Krippendorff 2011); spread = (max - min) / scale width, mean over criteria"}
