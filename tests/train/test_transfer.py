"""`foundry transfer` on tiny data writes the curve: a plot, a table, every run, labels needed per start; and
the bundled task's splits share no passage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from foundry.cli import main
from foundry.train.transfer import labels_needed, summarise

from tests.helpers.files import write_jsonl
from tests.helpers.labelled_task import task

TASKS = Path(__file__).resolve().parents[2] / "data" / "tasks"


@pytest.mark.slow
def test_curve_on_tiny_data_writes_plot_table_and_runs(tmp_path, ft_setup):
    write_jsonl(tmp_path / "test.jsonl", task(16, 5))
    recipe = {"out_dir": str(tmp_path / "curve"), "pretrained": str(ft_setup / "enc"),
              "continued": str(ft_setup / "enc"), "data": str(ft_setup / "train.jsonl"),
              "test_data": str(tmp_path / "test.jsonl"), "sizes": [4, 16], "seeds": [0, 1], "target_accuracy": 0.75,
              "min_steps": 4, "epochs": 2,
              "train": {"max_steps": 8, "micro_batch_size": 8, "block_size": 32, "lr": 2e-3, "warmup_steps": 1,
                        "threads": 1}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["transfer", "--config", str(tmp_path / "t.yaml")]) == 0
    out = tmp_path / "curve"
    record = json.loads((out / "transfer.json").read_text())
    assert len(record["runs"]) == 2 * 2 * 3  # sizes x seeds x (pretrained, continued, random)
    assert set(record["summary"]) == {"pretrained", "continued", "random"}
    png = (out / "transfer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (out / "transfer.md").read_text()
    assert "| 4 |" in table and "| 16 |" in table and "Labels needed to reach 0.75" in table
    assert not any((out / "runs").glob("*/checkpoints"))  # scored, then deleted
    # per-example right/wrong of every run, so a Findings claim compares starting points item by item
    from foundry.eval.findings import Claim, evaluate_claim

    for run in record["runs"]:
        assert len(run["correct"]) == 16 and sum(run["correct"]) / 16 == run["acc"]
    claim = Claim(id="transfer", lesson="pretraining saves labels", results="per_item.json", metric="task:test",
                  better=["pretrained_n16_s*"], than=["random_n16_s*"])
    finding = evaluate_claim(claim, out)
    expected = [sum(r["acc"] for r in record["runs"] if r["start"] == start and r["n"] == 16) / 2
                for start in ("pretrained", "random")]
    assert finding["paired"] and finding["n"] == 16
    assert abs(finding["effect"] - (expected[0] - expected[1])) < 1e-9
    # a second call finds every run done and only rewrites the summary
    assert main(["transfer", "--config", str(tmp_path / "t.yaml"), "--resume"]) == 0
    assert len(json.loads((out / "transfer.json").read_text())["runs"]) == 12
    # the report card shows the curve
    from foundry.eval.report import write_report

    written = write_report(out)
    report = written["report"].read_text()
    assert "## Transfer curve" in report and "Labels needed to reach 0.75" in report
    assert (out / "plots" / "transfer_curve.png").is_file()


def test_labels_needed_is_the_first_size_whose_mean_reaches_the_target():
    rows = [{"start": "p", "n": n, "seed": s, "acc": a, "macro_f1": a}
            for n, accs in ((16, [0.4, 0.5]), (32, [0.7, 0.6]), (64, [0.8, 0.9])) for s, a in enumerate(accs)]
    summary = summarise(rows, 0.6)
    assert summary["p"]["labels_needed"] == 32 and summary["p"]["by_n"][16]["mean"] == 0.45
    assert labels_needed({16: 0.1, 32: 0.2}, 0.5) is None


def test_bundled_task_splits_share_no_passage_and_match_source():
    import hashlib

    folder = TASKS / "kjv-division"
    meta = yaml.safe_load((folder / "SOURCE.yaml").read_text())
    texts = {}
    for split in ("train", "test"):
        body = (folder / f"{split}.jsonl").read_bytes()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"][split]
        rows = [json.loads(line) for line in body.decode().splitlines()]
        texts[split] = {r["text"] for r in rows}
        chapters = {r["source"].rsplit(",", 1)[0] for r in rows}
        texts[split + "_chapters"] = chapters
        assert len({r["label"] for r in rows}) == 6
    assert not texts["train"] & texts["test"]
    assert not texts["train_chapters"] & texts["test_chapters"]


def test_encoder_recipe_validates():
    from foundry.pipeline import load_recipe
    from foundry.train.pretrain import PretrainConfig
    from foundry.train.transfer import TransferConfig

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "encoder.yaml")
    stages = {s.name: s for s in recipe.stages}
    pretrain = PretrainConfig.model_validate(stages["pretrain"].config)
    assert pretrain.objective == "mlm" and pretrain.model.preset.startswith("bert-")
    transfer = TransferConfig.model_validate(stages["transfer"].config)
    assert transfer.target_accuracy == 0.5 and len(transfer.seeds) == 3
