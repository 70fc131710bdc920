"""foundry report: report card and model card carry the real figures of a (hand-built) tiny run directory."""

import json

import pytest

from tests.helpers.eval_models import fresh_model, tokenizer
from foundry.cli import main as cli
from foundry.eval.bakeoff.rubric import ModelEntry, load_rubric
from foundry.eval.bakeoff.summary import summarise


def _source(path, license_, collected, kept, dropped):
    return {"path": path, "group": "g", "format": "jsonl", "sha256": "ab" * 32, "bytes": 1000, "text_bytes": 900,
            "license": license_, "origin": "https://example.org/" + path.split("/")[-1], "collected": collected,
            "unlicensed": not license_,
            "documents": {"read": kept + sum(dropped.values()), "kept": kept, "train": kept - 2, "val": 2,
                          "dropped": dropped}}


def _dataset(d, sources, eval_files=()):
    d.mkdir(parents=True)
    drops = {k: sum(s["documents"]["dropped"].get(k, 0) for s in sources)
             for k in ("too_short", "exact_duplicate", "contaminated", "near_duplicate")}
    kept = sum(s["documents"]["kept"] for s in sources)
    manifest = {"format": "foundry-dataset/1", "sources": sources, "eval_files": list(eval_files),
                "unlicensed_sources": [s["path"] for s in sources if s["unlicensed"]],
                "totals": {"documents": {"read": kept + sum(drops.values()), "kept": kept, "train": kept - 2, "val": 2,
                                         "dropped": drops}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "run.json").write_text(json.dumps({"stage": "data", "created": "2026-11-23T09:00:00Z", "config": {},
                                            "parents": {"sources": ["ab" * 32]}, "results": {"totals": manifest["totals"]}}))


def _stage(d, kind, created, parents, results, metrics, config=None):
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"stage": kind, "created": created, "code_version": "abc1234",
                                            "config": config or {"train": {"lr": 0.003}}, "parents": parents,
                                            "data_manifests": {}, "results": results}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 99, "loss": 1.0')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from foundry.checkpoints import save_checkpoint

    run = tmp_path_factory.mktemp("r") / "quick"
    zero_drop = {"too_short": 0, "exact_duplicate": 0, "contaminated": 0, "near_duplicate": 0}
    _dataset(run / "data_general", [
        _source("data/general/kjv/kjv.jsonl", "Public Domain", "2023-01-15", 300,
                {**zero_drop, "exact_duplicate": 7, "near_duplicate": 3, "contaminated": 11})],
        eval_files=[{"path": "data/eval/kjv-continuation.jsonl", "sha256": "cd" * 32}])
    _dataset(run / "data_domain", [_source("data/domain/pydocs/a.jsonl", "PSF-2.0", "2024-03-01", 80, zero_drop)])
    post = run.parent / "post"  # SFT trains on a chat file directly; its SOURCE.yaml states no license
    post.mkdir()
    (post / "SOURCE.yaml").write_text("name: chats\norigin: written for the test\ncollected: 2025-06-01\n")
    (post / "instructions.jsonl").write_text('{"messages": []}\n' * 40)
    general, domain = (str(run / n) for n in ("data_general", "data_domain"))
    train = [{"step": s, "loss": 6.0 - 0.05 * s, "lr": 0.003, "elapsed_s": s / 10} for s in range(10, 101, 10)]
    _stage(run / "pretrain", "pretrain", "2026-11-23T09:01:00Z",
           {"dataset": general, "tokenizer": str(run / "tokenizer"), "tokenizer_sha256": "ef" * 32},
           {"status": "finished", "step": 100, "loss": 1.0, "val/loss": 2.4567, "best/val/loss": 2.3456,
            "train_seconds": 12.5, "params": 123456},
           train[:5] + [{"step": 50, "val/loss": 3.25, "val/ppl": 25.8}] + train[5:] + [{"step": 100, "val/loss": 2.3456}])
    _stage(run / "continue", "continue", "2026-11-23T09:02:00Z",
           {"checkpoint": str(run / "pretrain" / "checkpoints" / "best"), "datasets": {"domain": domain, "general": general}},
           {"status": "finished", "step": 40, "best/val/domain/loss": 1.875, "train_seconds": 4.25},
           [{"step": 0, "val/domain/loss": 3.5, "val/general/loss": 2.35}, {"step": 20, "loss": 3.0},
            {"step": 40, "loss": 2.2, "lr": 0.001}, {"step": 40, "val/domain/loss": 1.875, "val/general/loss": 2.5}])
    _stage(run / "sft", "sft", "2026-11-23T09:03:00Z",
           {"checkpoint": str(run / "continue" / "checkpoints" / "best"), "tokenizer_sha256": "ef" * 32},
           {"status": "finished", "step": 30, "val/loss": 1.5, "train_seconds": 3.0},
           [{"step": 10, "loss": 2.0}, {"step": 30, "loss": 1.25}, {"step": 30, "val/loss": 1.5}],
           config={"data": str(post / "instructions.jsonl"), "train": {"lr": 0.001}})
    save_checkpoint(run / "sft" / "checkpoints" / "best", fresh_model(), tokenizer())
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"kind": "foundry.eval", "shots": 0, "models": [
        {"name": "sft", "path": str(run / "sft" / "checkpoints" / "best"),
         "perplexity": {"pydocs": {"loss": 2.1, "ppl": 8.1662, "bpb": 0.8765, "tokens": 5000, "bytes": 17000}},
         "tasks": {"pydocs-continuation": {"kind": "mc", "n": 120, "acc": 0.625, "acc_stderr": 0.0443, "acc_norm": 0.5917,
                                           "acc_norm_stderr": 0.045, "shots": 0}}},
        {"name": "base-sft", "path": "/elsewhere/base-sft", "perplexity": {},
         "tasks": {"pydocs-continuation": {"kind": "mc", "n": 120, "acc": 0.4083, "acc_stderr": 0.045, "acc_norm": 0.39,
                                           "acc_norm_stderr": 0.045, "shots": 0}}}]}))
    rubric = run.parent / "rubric.yaml"
    rubric.write_text("criteria:\n  - {name: brief, type: length, max_words: 50}\n  - {name: accuracy, type: human}\n")
    summary = summarise(load_rubric(rubric), [ModelEntry(name="sft", path="x", price_per_1k_tokens=0.5)],
                        {"sft": {"tokens": 3000, "seconds": 2.0}}, {("sft", "p1"): {"brief": 1.0}, ("sft", "p2"): {"brief": 0.0}},
                        None, [{"id": "p1"}, {"id": "p2"}])
    (run / "bakeoff").mkdir()
    (run / "bakeoff" / "bakeoff.json").write_text(json.dumps(summary))
    (run / ".pipeline").mkdir()
    for name, seconds in (("pretrain", 42.5), ("continue", 17.25), ("sft", 9.5)):
        (run / ".pipeline" / f"{name}.json").write_text(json.dumps({"fingerprint": "x", "finished": "2026-11-23 09:0" +
                                                                    str(len(name)), "seconds": seconds}))
    return run


def test_report_has_the_runs_figures_and_plots(run):
    out = run / "report"
    assert cli(["report", str(run), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for figure in ("2.346", "42.5", "17.25", "12.5", "0.625 ± 0.044", "0.408 ± 0.045", "8.166", "0.8765",
                   "loss_pretrain.png", "loss_continue.png", "loss_sft.png", "| 1 | sft |", "pending"):
        assert figure in md, figure
    assert md.index("### pretrain") < md.index("### continue") < md.index("### sft")  # pipeline order
    assert "**Recommendation.** Best: sft" in md and "cost / 1k answers" in md  # the bake-off's decision
    # Curve summary of pretrain: first train loss 5.5 at step 10, last 1 at step 100; val 3.25 -> 2.346.
    assert "| train | 10 | 5.5 | 100 | 1 | 1 |" in md
    assert "| val/loss | 50 | 3.25 | 100 | 2.346 | 2.346 |" in md
    assert "val/domain/loss" in md and "documents kept" in md
    for name in ("pretrain", "continue", "sft"):
        png = out / "plots" / f"loss_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="plots/loss_pretrain.png"' in html and "0.625" in html


def test_model_card_lineage_provenance_and_cutoff(run):
    out = run / "report-card"
    assert cli(["report", str(run), "--out", str(out)]) == 0
    card = (out / "MODEL_CARD.md").read_text()
    lineage = card.split("## Lineage")[1].split("##")[0]
    assert lineage.index("| sft |") < lineage.index("| continue |") < lineage.index("| pretrain |")
    assert f"`{run / 'continue' / 'checkpoints' / 'best'}`" in lineage and "random initialisation" in lineage
    assert "2.346" in lineage and "1.875" in lineage
    assert "general/kjv/kjv.jsonl" in card and "Public Domain" in card and "PSF-2.0" in card
    assert "**UNLICENSED**" in card and "Flagged: 1 source(s) without a license" in card
    assert "post/instructions.jsonl`" in card.split("Flagged")[1].split("\n")[0]
    assert "| sft | sft | post |" in card and "| 1 | 40 | 0 |" in card  # one file, 40 chats
    # kjv: 7 exact + 3 near duplicates, 11 contaminated, decontaminated against the eval file.
    assert "| 321 | 300 | 7 | 3 | 11 | kjv-continuation.jsonl | 0 |" in card
    assert "**Knowledge cutoff: 2024-03-01.**" in card and "nothing of events after 2024-03-01" in card
    assert "collected later (2025-06-01)" in card
    params = fresh_model().num_params()
    assert f"{params / 1e6:.2f}M parameters" in card
    assert "acc 0.625" in card and "base-sft" not in card.split("## Evaluation")[1]


def test_report_bad_inputs_change_nothing(run, tmp_path, capsys):
    assert cli(["report", str(tmp_path / "missing")]) == 1
    assert "run directory not found" in capsys.readouterr().err
    out = run / "report"
    if not (out / "report.md").exists():
        assert cli(["report", str(run), "--out", str(out)]) == 0
    before = (out / "report.md").read_bytes()
    assert cli(["report", str(run), "--out", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert cli(["report", str(run), "--out", str(fresh), "--model", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert "no stage 'nosuch'" in err and err.count("\n") == 1 and not (fresh / "report.md").exists()
    assert (out / "report.md").read_bytes() == before
    assert cli(["report", str(run), "--out", str(out), "--overwrite", "--model", "continue"]) == 0
    assert "stage **continue**" in (out / "MODEL_CARD.md").read_text()


def test_damaged_stage_record_is_a_one_line_error(tmp_path, capsys):
    stage = tmp_path / "run" / "pretrain"
    stage.mkdir(parents=True)
    (stage / "run.json").write_text('{"stage": "pretrain", ')
    assert cli(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert f"{stage / 'run.json'}: not valid JSON" in err and err.count("\n") == 1
    assert not (tmp_path / "rep" / "report.md").exists()


def test_headlines_summarise_the_run(run, tmp_path):
    assert cli(["report", str(run), "--out", str(tmp_path / "h")]) == 0
    head = (tmp_path / "h" / "report.md").read_text().split("## Headlines")[1].split("##")[0]
    assert "**pretrain** (pretrain): best val/loss 2.346" in head
    assert "**continue** (continue): best val/domain/loss 1.875" in head
    assert "**pydocs-continuation** accuracy: sft 0.625, base-sft 0.408" in head
    assert "**bake-off** ranking: sft; choose sft (human criteria pending)" in head
