"""`foundry finetune`: a classifier learns a task on an encoder (full) and a decoder (LoRA), keeps its label
names, reports accuracy / macro-F1 / a confusion matrix, and each bad input is one line."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from foundry.checkpoints import load_model, save_checkpoint
from foundry.cli import main
from foundry.model.classifier import classify
from foundry.utils.classification import classification_scores

from tests.helpers.files import write_jsonl
from tests.helpers.labelled_task import task
from tests.helpers.serve_fixtures import tiny_tokenizer

# ft_setup (the encoder and decoder checkpoints and the task's files): tests/train/conftest.py


def recipe(tmp_path, root, init="enc", **extra):
    r = {"out_dir": str(tmp_path / "run"), "init": str(root / init), "data": str(root / "train.jsonl"),
         "val_data": str(root / "val.jsonl"),
         "train": {"max_steps": 30, "micro_batch_size": 8, "block_size": 32, "lr": 2e-3, "warmup_steps": 2,
                   "eval_every": 15, "log_every": 5, "checkpoint_every": 30, "threads": 1, "progress": False}}
    r.update(extra)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_encoder_classifier_learns_and_keeps_label_names(tmp_path, ft_setup, capsys):
    assert main(["finetune", "--config", str(recipe(tmp_path, ft_setup))]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "true \\ pred" in out
    scores = json.loads((tmp_path / "run" / "classification.json").read_text())
    assert scores["acc"] >= 0.9 and scores["macro_f1"] >= 0.9
    assert sum(map(sum, scores["confusion"])) == 20
    model, tok = load_model(tmp_path / "run")
    assert model.config.labels == ["market", "river"]
    probs = classify(model, tok, ["copper coin salt price", "boat river fish water"])
    assert [model.config.labels[k] for k in probs.argmax(-1).tolist()] == ["market", "river"]
    # foundry eval scores the saved classifier the same way
    assert main(["eval", str(tmp_path / "run"), "--labelled", str(ft_setup / "val.jsonl"),
                 "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["run"]
    assert evaluated["acc"] == scores["acc"] and evaluated["confusion"] == scores["confusion"]


def test_decoder_lora_classifier_from_csv(tmp_path, ft_setup):
    csv_path = tmp_path / "train.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(task(40, 0))
    path = recipe(tmp_path, ft_setup, init="dec", data=str(csv_path), lora={"rank": 4, "alpha": 8})
    assert main(["finetune", "--config", str(path)]) == 0
    scores = json.loads((tmp_path / "run" / "classification.json").read_text())
    assert scores["acc"] >= 0.8
    model, _ = load_model(tmp_path / "run")
    assert model.config.kind == "llama" and model.config.pooling == "last"
    assert not any("lora" in k for k in model.state_dict())  # merged


def test_scores_on_hand_computed_numbers():
    s = classification_scores([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert s["acc"] == pytest.approx(3 / 5)
    # f1: a = 2*.5*.5/1 = .5; b = 2*(2/3)*1/(5/3) = .8; c = 0
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert s["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


@pytest.mark.parametrize("case,expect", [
    ("unknown_label", "unknown label 'harbour'"),
    ("no_label_column", "no 'label' column"),
    ("single_class", "at least two classes"),
    ("tokenizer", "the data's tokenizer is not the model's"),
    ("already", "already a classifier"),
    ("not_utf8_jsonl", "t.jsonl:2: not UTF-8 text"),
    ("not_utf8_csv", "t.csv:3: not UTF-8 text"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, ft_setup, capsys, case, expect):
    extra = {}
    if case == "unknown_label":
        extra["val_data"] = str(write_jsonl(tmp_path / "v.jsonl", task(4, 2) + [{"text": "sea", "label": "harbour"}]))
    elif case == "no_label_column":
        (tmp_path / "t.csv").write_text("text,topic\nriver water,river\n")
        extra["data"] = str(tmp_path / "t.csv")
    elif case == "not_utf8_jsonl":
        (tmp_path / "t.jsonl").write_bytes(b'{"text": "river water", "label": "river"}\n{"text": "\xff", "label": "sea"}\n')
        extra["data"] = str(tmp_path / "t.jsonl")
    elif case == "not_utf8_csv":
        (tmp_path / "t.csv").write_bytes(b"text,label\nriver water,river\nsalt \xff,sea\n")
        extra["data"] = str(tmp_path / "t.csv")
    elif case == "single_class":
        extra["data"] = str(write_jsonl(tmp_path / "t.jsonl", [r for r in task(10, 0) if r["label"] == "river"]))
    elif case == "tokenizer":
        other = tiny_tokenizer(vocab_size=300)
        other.save(tmp_path / "other_tok")
        extra["tokenizer"] = str(tmp_path / "other_tok")
    elif case == "already":
        from foundry.model.classifier import classifier_from_model

        enc, tok = load_model(ft_setup / "enc")
        save_checkpoint(tmp_path / "clf", classifier_from_model(enc, ["a", "b"]), tok, meta={"step": 0})
        extra["init"] = str(tmp_path / "clf")
    assert main(["finetune", "--config", str(recipe(tmp_path, ft_setup, **extra))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "run").exists()


def test_classify_route_answers_with_label_names(ft_setup):
    from fastapi.testclient import TestClient

    from foundry.model.classifier import classifier_from_model
    from foundry.serve.classify import create_classify_app
    from foundry.serve.server import ServerSettings

    enc, tok = load_model(ft_setup / "enc")
    clf = classifier_from_model(enc, ["market", "river"])
    client = TestClient(create_classify_app(clf, tok, ServerSettings(model_name="clf", api_key="k")))
    auth = {"Authorization": "Bearer k"}
    r = client.post("/v1/classify", json={"model": "clf", "input": ["copper coin", "river boat"]}, headers=auth)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and all(d["label"] in ("market", "river") for d in data)
    assert abs(sum(data[0]["scores"].values()) - 1) < 1e-4
    assert client.post("/v1/classify", json={"input": "x"}).status_code == 401
    bad = client.post("/v1/classify", json={"input": []}, headers=auth)
    assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
    assert client.post("/v1/classify", json={"model": "other", "input": "x"}, headers=auth).status_code == 404
    listed = client.get("/v1/models", headers=auth).json()["data"]
    assert [(m["id"], m["labels"]) for m in listed] == [("clf", ["market", "river"])]
    assert client.get("/v1/models/clf", headers=auth).json() == listed[0]
    assert client.get("/v1/models/other", headers=auth).status_code == 404
    assert client.get("/v1/models").status_code == 401
