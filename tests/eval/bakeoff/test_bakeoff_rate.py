"""`foundry bakeoff rate`: the rating page's API (tokens, per-rater order, atomic saves, conflicts, bad
input), the CSV sheet feeding the same store, and the summary's agreement between raters."""

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient

from tests.helpers.bakeoff_fixture import make_bakeoff
from foundry.cli import main as cli
from foundry.eval.agreement import krippendorff_alpha
from foundry.eval.bakeoff.rate import create_rating_app, ensure_raters


@pytest.fixture()
def bake(tmp_path):
    out = make_bakeoff(tmp_path)
    raters = ensure_raters(out, ["alice", "bob"])
    return out, raters, TestClient(create_rating_app(out, raters))


def _h(token):
    return {"X-Rater-Token": token}


def _rate(client, token, bid, version, **body):
    return client.put("/api/rating", headers=_h(token), json={"blind_id": bid, "version": version, **body})


def _stored(out):
    return json.loads((out / "ratings.json").read_text())["raters"]


def test_tokens_orders_and_resume(bake):
    out, raters, client = bake
    assert ensure_raters(out, ["alice"]) == raters  # links survive a restart
    key = json.loads((out / "blind_key.json").read_text())["key"]
    orders = {}
    for name, token in raters.items():
        s = client.get("/api/session", headers=_h(token)).json()
        assert s["rater"] == name and s["total"] == 6 and s["done"] == 0 and s["position"] == 0
        assert [c["name"] for c in s["criteria"]] == ["accuracy", "voice"]  # human criteria only
        assert "Every claim" in s["criteria"][0]["description"]
        orders[name] = [client.get(f"/api/item/{i}", headers=_h(token)).json()["blind_id"] for i in range(6)]
        assert sorted(orders[name]) == sorted(key)
    assert orders["alice"] != orders["bob"]  # each rater has an order of their own
    item = client.get("/api/item/0", headers=_h(raters["alice"])).json()
    assert "alpha" not in json.dumps(item) and "beta" not in json.dumps(item)  # blinded
    # Rate the first answer fully and the second half-way: the session resumes at the second.
    bid0, bid1 = orders["alice"][:2]
    r = _rate(client, raters["alice"], bid0, 0, scores={"accuracy": 4})
    assert r.status_code == 200 and r.json()["done"] == 0 and r.json()["rating"]["version"] == 1
    assert _stored(out)["alice"][bid0]["scores"] == {"accuracy": 4}  # on disk the moment it is given
    r = _rate(client, raters["alice"], bid0, 1, scores={"voice": 2}, comments="fine")
    assert r.json()["done"] == 1 and r.json()["complete"] == [0]
    _rate(client, raters["alice"], bid1, 0, scores={"voice": 3})
    s = client.get("/api/session", headers=_h(raters["alice"])).json()
    assert (s["done"], s["position"], s["finished"]) == (1, 1, False)
    again = client.get("/api/item/0", headers=_h(raters["alice"])).json()
    assert again["scores"] == {"accuracy": 4, "voice": 2} and again["comments"] == "fine" and again["version"] == 2
    # Changing a score (going back) keeps the rest; clearing one is allowed too.
    _rate(client, raters["alice"], bid0, 2, scores={"accuracy": 5})
    assert _stored(out)["alice"][bid0]["scores"] == {"accuracy": 5, "voice": 2}
    assert client.get("/api/session", headers=_h(raters["bob"])).json()["done"] == 0  # bob's are his own


def test_bad_input_is_refused_and_nothing_saved_is_lost(bake):
    out, raters, client = bake
    alice = raters["alice"]
    bid = client.get("/api/item/0", headers=_h(alice)).json()["blind_id"]
    assert _rate(client, alice, bid, 0, scores={"accuracy": 3, "voice": 1}).status_code == 200
    before = (out / "ratings.json").read_bytes()
    cases = [
        (_rate(client, alice, bid, 1, scores={"accuracy": 6}), 400, "not an integer on the scale 1..5"),
        (_rate(client, alice, bid, 1, scores={"voice": 2.5}), 400, "scale 1..3"),
        (_rate(client, alice, bid, 1, scores={"vibes": 2}), 400, "'vibes' is not a human criterion"),
        (_rate(client, alice, bid, 1, scores={"brief": 1}), 400, "'brief' is not a human criterion"),
        (_rate(client, alice, "Rdeadbe", 0, scores={"accuracy": 3}), 404, "not in this bake-off's sheet"),
        (_rate(client, "forged-token", bid, 1, scores={"accuracy": 3}), 401, "token is not valid"),
        (client.put("/api/rating", json={"blind_id": bid, "version": 1, "scores": {"accuracy": 2}}), 401, "token"),
        (client.get("/api/session"), 401, "missing its token"),
        (client.put("/api/rating", headers=_h(alice), content=b"{nope"), 400, "not JSON"),
        (_rate(client, alice, bid, None, scores={"accuracy": 2}), 400, "'version'"),
        (client.get("/api/item/6", headers=_h(alice)), 404, "there is no answer 7"),
        # a second tab that loaded the answer before the first tab's rating: refused, not overwritten
        (_rate(client, alice, bid, 0, scores={"accuracy": 1}), 409, "changed in another tab"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
    assert (out / "ratings.json").read_bytes() == before
    # The second tab reloads the answer (version 1) and its change then goes through.
    assert _rate(client, alice, bid, 1, scores={"accuracy": 1}).json()["rating"]["scores"] == {"accuracy": 1, "voice": 1}


def test_a_rubric_without_human_criteria_has_nothing_to_rate(tmp_path):
    out = make_bakeoff(tmp_path, "criteria:\n  - {name: brief, type: length, max_words: 12}\n")
    raters = ensure_raters(out, ["alice"])
    client = TestClient(create_rating_app(out, raters))
    s = client.get("/api/session", headers=_h(raters["alice"])).json()
    assert s["criteria"] == []
    bid = client.get("/api/item/0", headers=_h(raters["alice"])).json()["blind_id"]
    r = _rate(client, raters["alice"], bid, 0, scores={})
    assert r.status_code == 409 and "nothing to rate" in r.json()["error"]
    assert not (out / "ratings.json").exists()
    assert "nothing to rate" in client.get("/").text.lower()  # the page says so


def test_two_raters_and_a_sheet_feed_one_summary_with_agreement(bake, tmp_path, capsys):
    out, raters, client = bake
    key = json.loads((out / "blind_key.json").read_text())["key"]
    # alice: alpha's answers accuracy 4, beta's 2; bob agrees except on one beta answer (5).
    bob_differs = sorted(b for b, o in key.items() if o["model"] == "beta")[0]
    given = {"alice": {}, "bob": {}}
    for name in ("alice", "bob"):
        for bid, owner in key.items():
            acc = 4 if owner["model"] == "alpha" else 2
            if name == "bob" and bid == bob_differs:
                acc = 5
            voice = 3 if owner["model"] == "alpha" else 1
            given[name][bid] = acc
            assert _rate(client, raters[name], bid, 0, scores={"accuracy": acc, "voice": voice}).status_code == 200
    assert cli(["bakeoff", "summary", str(out)]) == 0
    summary = json.loads((out / "bakeoff.json").read_text())
    agree = summary["agreement"]
    units = {b: [given["alice"][b], given["bob"][b]] for b in key}
    assert agree["criteria"]["accuracy"]["alpha"] == pytest.approx(krippendorff_alpha(units, "ordinal"), abs=1e-4)
    assert 0 < agree["criteria"]["accuracy"]["alpha"] < 1 and agree["criteria"]["voice"]["alpha"] == 1.0
    assert agree["criteria"]["accuracy"]["answers_rated_twice"] == 6
    assert [d["blind_id"] for d in agree["disagreements"]] == [bob_differs]
    by = {m["name"]: m["criteria"] for m in summary["models"]}
    assert by["alpha"]["accuracy"]["mean"] == 4.0 and by["beta"]["accuracy"]["mean"] == pytest.approx((3.5 + 2 + 2) / 3)
    assert by["beta"]["accuracy"]["half_width"] > 0
    md = (out / "bakeoff.md").read_text()
    assert "Raters' agreement" in md and bob_differs in md
    # A filled CSV sheet by a third rater lands in the same store, next to the page's raters.
    rows = list(csv.DictReader(io.StringIO((out / "rating_sheet.csv").read_text())))
    sheet = tmp_path / "carol.csv"
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "rater"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "accuracy": 3, "voice": 2, "rater": "carol"})
    assert cli(["bakeoff", "--out", str(out), "--ratings", str(sheet)]) == 0
    stored = json.loads((out / "ratings.json").read_text())["raters"]
    assert sorted(stored) == ["alice", "bob", "carol"] and len(stored["carol"]) == 6
    summary = json.loads((out / "bakeoff.json").read_text())
    assert summary["agreement"]["raters"] == ["alice", "bob", "carol"]
    assert {m["name"]: m["criteria"]["accuracy"]["mean"] for m in summary["models"]}["alpha"] == pytest.approx(11 / 3)
    capsys.readouterr()


def test_the_rate_command_refuses_what_it_cannot_serve(tmp_path, capsys):
    assert cli(["bakeoff", "rate", str(tmp_path)]) == 1
    assert "not a bake-off directory" in capsys.readouterr().err
    out = make_bakeoff(tmp_path)
    assert cli(["bakeoff", "rate", str(out)]) == 1
    assert "no raters yet; name them: foundry bakeoff rate" in capsys.readouterr().err
    assert cli(["bakeoff", "rate", str(out), "--rater", "../eve"]) == 1
    assert "a rater name is 1-64 letters" in capsys.readouterr().err
    assert not (out / "raters.json").exists()


def test_two_processes_writing_the_store_lose_nothing(tmp_path):
    """The page and a sheet import (or two pages) in separate processes: every rating each saved is there."""
    import subprocess
    import sys

    out = make_bakeoff(tmp_path)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from foundry.eval.bakeoff.store import RatingStore\n"
        "out = Path(sys.argv[1]); state = json.loads((out / 'state.json').read_text())\n"
        "store = RatingStore(out, json.loads((out / 'blind_key.json').read_text()), state['criteria'])\n"
        "for i in range(10):\n"
        "    for bid in sorted(store.key):\n"
        "        store.rate(sys.argv[2], bid, {'accuracy': 1 + i % 5})\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), name]) for name in ("p1", "p2", "p3")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    stored = _stored(out)
    assert sorted(stored) == ["p1", "p2", "p3"]
    # 10 rounds over 6 answers: every one of the 60 changes of each process was kept (version 10 each).
    assert all(r["version"] == 10 and r["scores"] == {"accuracy": 5} for items in stored.values() for r in items.values())
