"""A two-rater test run of the rating page: the bundled bake-off prompts, two answer sets, two SIMULATED raters
rating every answer through the page's HTTP API on a real uvicorn server, then the summary with agreement.

What is real: the bake-off directory (blinded with `blind`, scored with the rubric's automatic criteria),
the server, each rater's own order, every rating saved one at a time through `PUT /api/rating`, the
summary (`refresh_summary`: means with 95% intervals, Krippendorff's alpha, the most disputed answers).
What is simulated: the raters. No person rated here; each simulated rater scores accuracy from how
much of the reference answer an answer carries (token F1) plus their own noise (rater_b noisier and a
little more lenient), and voice with no signal at all (every answer is King James text), so the run
shows alpha where raters track a real difference and where they do not.

    python benchmarks/rating_two_raters.py --out benchmarks/results/rating_two_raters
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from foundry.eval.bakeoff.rate import create_rating_app, ensure_raters
from foundry.eval.bakeoff.rubric import load_prompts, load_rubric
from foundry.eval.bakeoff.scoring import score_outputs, token_f1
from foundry.eval.bakeoff.sheet import blind
from foundry.eval.bakeoff.summary import refresh_summary
from foundry.utils.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RUBRIC = """\
name: scripture-desk (no style model)
criteria:
  - {name: accuracy_auto, type: reference_similarity, metric: token_f1, from_prompt: reference, weight: 2}
  - {name: required_facts, type: must_include, from_prompt: required, weight: 2}
  - name: accuracy
    type: human
    scale: [1, 5]
    weight: 3
    description: "1 = wrong or off-topic, 3 = partly right, 5 = exactly right"
  - name: voice
    type: human
    scale: [1, 5]
    weight: 1
    description: "1 = off-brand, 5 = reads like the King James text"
"""


def answers(prompts: list[dict]) -> list[dict]:
    """Two answer sets: 'steady' (exact on even prompts, half right on odd ones) and 'loose' (a third
    exact, a third half right, a third another verse's ending)."""
    refs = [p["reference"] for p in prompts]
    out = []
    for i, p in enumerate(prompts):
        words, other = refs[i].split(), refs[(i + 7) % len(refs)].split()
        half = " ".join(words[:len(words) // 2] + other[len(other) // 2:])
        steady = refs[i] if i % 2 == 0 else half
        loose = [refs[i], half, " ".join(other)][i % 3]
        out += [{"model": "steady", "prompt_id": p["id"], "output": steady, "tokens": len(steady.split())},
                {"model": "loose", "prompt_id": p["id"], "output": loose, "tokens": len(loose.split())}]
    return out


def simulated_score(rater: str, answer: str, reference: str, seed: int) -> dict:
    """The simulated rater's scores of one answer; the noise is seeded per rater and answer, so the run is
    the same whatever order the page shows the answers in."""
    rng = random.Random(f"simulated-{rater}-{seed}-{answer}")
    noise, bias = {"rater_a": (0.5, 0.0), "rater_b": (0.8, 0.3)}[rater]
    accuracy = round(1 + 4 * token_f1(answer, reference) + bias + rng.gauss(0, noise))
    voice = round(4 + rng.gauss(0, 0.9))  # no signal: every answer is King James text
    return {"accuracy": min(5, max(1, accuracy)), "voice": min(5, max(1, voice))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/rating_two_raters")
    ap.add_argument("--seed", type=int, default=0, help="the simulated raters' noise (and the blinding)")
    args = ap.parse_args()
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    bake = work / "bakeoff"
    bake.mkdir(parents=True)
    atomic_write_text(work / "rubric.yaml", RUBRIC)
    criteria = load_rubric(work / "rubric.yaml")
    prompts = load_prompts(ROOT / "data" / "bakeoff" / "prompts.jsonl", criteria)
    outputs = answers(prompts)
    auto = score_outputs(criteria, outputs, prompts)
    for o in outputs:
        o["scores"] = auto[(o["model"], o["prompt_id"])]
    ap_seed = args.seed
    sheet, key = blind(outputs, prompts, criteria, secret=f"two-rater-run-{ap_seed}")  # fixed: a reproducible run
    atomic_write_text(bake / "outputs.jsonl", "".join(json.dumps(o) + "\n" for o in outputs))
    atomic_write_json(bake / "state.json", {"config_path": None, "criteria": criteria, "prompts": prompts,
                                            "models": [{"name": m, "path": m} for m in ("steady", "loose")],
                                            "usage": {m: {"tokens": 0, "seconds": 0.0} for m in ("steady", "loose")}})
    atomic_write_text(bake / "rating_sheet.csv", sheet)
    atomic_write_json(bake / "blind_key.json", key)

    raters = ensure_raters(bake, ["rater_a", "rater_b"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_rating_app(bake, raters), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    refs = {p["id"]: p["reference"] for p in prompts}
    t0 = time.perf_counter()
    saved = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, token in raters.items():
            h = {"X-Rater-Token": token}
            session = client.get("/api/session", headers=h).json()
            for i in range(session["total"]):
                item = client.get(f"/api/item/{i}", headers=h).json()
                version = item["version"]
                # the rater sees the prompt and the answer only; the reference stands in for their knowledge
                prompt_id = next(p["id"] for p in prompts if p["prompt"] == item["prompt"])
                for crit, value in simulated_score(name, item["answer"], refs[prompt_id], args.seed).items():
                    r = client.put("/api/rating", headers=h,
                                   json={"blind_id": item["blind_id"], "version": version, "scores": {crit: value}})
                    r.raise_for_status()
                    version = r.json()["rating"]["version"]
                    saved += 1
            assert client.get("/api/session", headers=h).json()["finished"]
    seconds = time.perf_counter() - t0
    server.should_exit = True
    thread.join(timeout=10)
    summary = refresh_summary(bake, quiet=True)
    result = {"ratings_saved": saved, "seconds": round(seconds, 2), "ms_per_rating": round(1000 * seconds / saved, 2),
              "answers": len(outputs), "agreement": summary["agreement"],
              "means": {m["name"]: {c: {k: m["criteria"][c][k] for k in ("mean", "half_width", "n")}
                                    for c in ("accuracy", "voice", "accuracy_auto")} for m in summary["models"]},
              "raters_simulated": True, "seed": args.seed}
    atomic_write_json(work / "result.json", result)
    (work / "raters.json").unlink(missing_ok=True)
    (bake / "raters.json").unlink(missing_ok=True)  # tokens are not results
    (bake / ".ratings.lock").unlink(missing_ok=True)
    print((bake / "bakeoff.md").read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "agreement"}, indent=1))


if __name__ == "__main__":
    main()
