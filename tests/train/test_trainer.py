"""The training loop as a `Trainer`: a step called by hand is the step `fit` takes; the stage registry; the lineage
every stage records; the pipeline's typed entry points and the process state it restores between stages."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from foundry.config import TrainConfig
from foundry.model.llama import Llama, config_from_preset
from foundry.train.distributed import DistEnv
from foundry.train.loop import Trainer
from foundry.train.objectives import BatchSource, NextTokenObjective, SourceBase
from foundry.train.step import optimizer_step
from foundry.utils.io import RunRecord, read_metrics
from tests.helpers.fake_verbs import install_verb_module

SRC = Path(__file__).resolve().parents[2] / "src" / "foundry"


class OneBatch(SourceBase):
    """The same batch every step, with a resumable counter."""

    def __init__(self, batch):
        self.batch, self.drawn = batch, 0

    def next_batch(self, batch_size):
        self.drawn += 1
        return self.batch

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, state):
        self.drawn = state["drawn"]


def _batch():
    ids = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}


def _trainer(run_dir: Path, **train) -> Trainer:
    torch.manual_seed(0)
    model = Llama(config_from_preset("test", vocab_size=64, max_seq_len=16))
    cfg = TrainConfig(**{"max_steps": 1, "micro_batch_size": 4, "block_size": 16, "lr": 1e-2, "warmup_steps": 0,
                         "log_every": 1, "checkpoint_every": 100, "progress": False, "device": "cpu", **train})
    record = RunRecord(run_dir, "pretrain", cfg)
    return Trainer(model, NextTokenObjective(), OneBatch(_batch()), cfg, run_dir, None, record, DistEnv())


def test_train_step_called_directly_lowers_the_loss_and_is_the_step_fit_takes(tmp_path):
    stepped = _trainer(tmp_path / "by_hand", max_steps=8)
    first = stepped.train_step()
    assert first["step"] == 1 and not first["skipped"] and first["loss"] > 0
    weights_after_one = [p.detach().clone() for p in stepped.base.parameters()]
    later = [stepped.train_step()["loss"] for _ in range(5)]
    assert later[-1] < first["loss"] - 0.1, (first["loss"], later)  # it learns the batch
    assert stepped.step == 6

    fitted = _trainer(tmp_path / "fit", max_steps=1)
    final = fitted.fit()
    assert final["step"] == 1 and final["loss"] == first["loss"]  # bit for bit the same step
    assert read_metrics(tmp_path / "fit")[0]["loss"] == first["loss"]
    for p_fit, p_hand in zip(fitted.base.parameters(), weights_after_one):
        assert torch.equal(p_fit, p_hand)
    assert (tmp_path / "fit" / "checkpoints" / "step_0000001").is_dir()


def test_optimizer_step_is_what_the_trainer_runs(tmp_path):
    trainer = _trainer(tmp_path / "t")
    loss_by_trainer = trainer.train_step()["loss"]
    torch.manual_seed(0)
    model = Llama(config_from_preset("test", vocab_size=64, max_seq_len=16))
    from foundry.train.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    out = optimizer_step(model, NextTokenObjective(), [_batch()], build_optimizer(model, trainer.cfg), params,
                         torch.device("cpu"), grad_clip=trainer.cfg.grad_clip)
    assert out.finite and out.loss == loss_by_trainer and out.total_units == 4 * 16


def test_sources_declare_every_hook_of_the_protocol():
    from foundry.train.batches import ShuffledRows

    rows = ShuffledRows(3, seed=0)
    assert isinstance(rows, BatchSource) and rows.step_metrics(1, 0.0) == {}
    assert SourceBase().state_dict() == {}


# ---- the stage registry -------------------------------------------------------------------------------
def test_registry_covers_every_training_verb_and_every_stage_runner():
    from foundry.cli import VERBS
    from foundry.stages import STAGES, TRAINING_VERBS

    training = {v for v, (target, _) in VERBS.items()
                if target.split(":")[0] == "foundry.commands.train" and v not in ("plan", "selftest")} | {"clip"}
    assert training <= set(TRAINING_VERBS), training - set(TRAINING_VERBS)
    assert {"rl", "clip", "finetune"} <= set(TRAINING_VERBS)
    for spec in STAGES.values():
        config_cls = spec.config_class()
        assert "out_dir" in config_cls.model_fields and callable(spec.run_function())
        assert spec.card and spec.kind in ("pretraining", "post-training", "fine-tuning")
    # every StageRunner a stage opens is a registered stage name (selftest's probe runs are not a stage)
    names = set()
    for path in set((SRC / "train").glob("*.py")) - {SRC / "train" / "stage.py"}:  # stage.py: its docstring example
        names |= set(re.findall(r'StageRunner\("([a-z]+)"', path.read_text()))
    assert names and names <= set(STAGES), names - set(STAGES)


def _stage_dir(root: Path, name: str, stage: str, config: dict | None = None, results: dict | None = None) -> Path:
    from foundry.utils.io import write_run_record

    d = root / name
    d.mkdir(parents=True)
    write_run_record(d, stage, config or {}, results={"status": "finished", "step": 3, **(results or {})})
    return d


@pytest.mark.parametrize("stage", ["rl", "clip", "finetune"])
def test_model_card_and_report_read_the_registry(tmp_path, stage):
    from foundry.eval.modelcard import render_model_card
    from foundry.eval.report_text import headlines
    from foundry.eval.run_view import discover
    from foundry.stages import STAGES

    _stage_dir(tmp_path, "data", "data")
    _stage_dir(tmp_path, "trained", stage, results={"best/val/loss": 1.25})  # no checkpoints/ left
    view = discover(tmp_path)
    card = render_model_card(view)
    assert f"stage **trained** ({stage}: {STAGES[stage].card})" in card
    assert STAGES[stage].card in card.split("## Lineage")[1]
    assert any(f"**trained** ({stage})" in line for line in headlines(view))


def test_an_old_mlm_record_still_reads_as_the_mlm_stage(tmp_path):
    from foundry.eval.modelcard import render_model_card
    from foundry.eval.run_view import discover
    from foundry.stages import STAGES, spec_for_record

    assert spec_for_record({"stage": "pretrain", "config": {"objective": "mlm"}}) is STAGES["mlm"]
    assert spec_for_record({"stage": "pretrain", "config": {}}) is STAGES["pretrain"]
    assert spec_for_record({"stage": "data"}) is None
    _stage_dir(tmp_path, "encoder", "pretrain", config={"objective": "mlm"})
    card = render_model_card(discover(tmp_path))
    assert STAGES["mlm"].card in card and "random initialisation" in card


# ---- lineage: built once, by the runner ------------------------------------------------------------------
def test_continue_lineage_records_the_resolved_start_and_its_tokenizer(tmp_path):
    from foundry.checkpoints import save_checkpoint
    from foundry.data.tokenizer import Tokenizer
    from foundry.train.continual import ContinueConfig
    from foundry.train.stage import StageRunner

    tok = Tokenizer.train(["in the beginning god created the heaven and the earth"] * 20, vocab_size=300,
                          min_frequency=1)
    base_run = tmp_path / "base"
    torch.manual_seed(0)
    model = Llama(config_from_preset("test", vocab_size=tok.vocab_size, max_seq_len=64))
    ckpt = save_checkpoint(base_run / "checkpoints" / "step_0000004", model, tok, None, {"step": 4, "stage": "pretrain"})
    (tmp_path / "domain").mkdir()
    cfg = ContinueConfig(out_dir=str(tmp_path / "out"), init=str(base_run),
                         mixture=[{"name": "domain", "data": str(tmp_path / "domain"), "weight": 1.0}],
                         train={"block_size": 32, "device": "cpu"})
    with StageRunner("continue", cfg) as runner:
        runner.load_start(cfg.init)
        parents, manifests = runner.lineage({"datasets": {"domain": str((tmp_path / "domain").resolve())}})
    assert parents["checkpoint"] == str(Path(ckpt).resolve()) != str(base_run.resolve())  # the resolved start
    assert parents["checkpoint_kind"] == "foundry" and parents["tokenizer_sha256"] == tok.sha256
    assert list(parents) == ["checkpoint", "checkpoint_kind", "datasets", "tokenizer_sha256"] and manifests == {}
    # and no stage builds its own: the hand-made lineage dicts are gone
    for name in ("sft", "dpo", "grpo", "finetune", "continual"):
        assert '"checkpoint_kind"' not in (SRC / "train" / f"{name}.py").read_text(), name


# ---- the pipeline: typed entry points, process state restored ---------------------------------------------
STATE_VERBS = textwrap.dedent('''
    import json
    import random
    from pathlib import Path

    import numpy as np
    import torch
    from pydantic import Field

    from foundry.config import StrictModel

    def change_main(argv):  # a stage that changes process-wide settings and leaves them changed
        torch.set_num_threads(1 if torch.get_num_threads() != 1 else 2)
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        Path(argv[argv.index("--out") + 1]).mkdir(parents=True)

    def look_main(argv):  # what the next stage finds
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "state.json").write_text(json.dumps({
            "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch": torch.rand(1).item(), "numpy": float(np.random.rand()), "random": random.random()}))

    class TrainCfg(StrictModel):
        out_dir: str = Field(description="run directory")
        value: int = Field(1, description="a number")
        overwrite: bool = Field(False, description="start over")

    CALLS = []

    def run(cfg, resume=False):
        CALLS.append((cfg, resume, torch.get_num_threads()))
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        return {"step": 1}

    def train_main(argv):
        raise AssertionError("a training verb with a config must not go through main(argv)")
''')


@pytest.fixture
def state_verbs(tmp_path, monkeypatch):
    from foundry import stages

    module = install_verb_module(tmp_path, monkeypatch, "state_verbs_mod", STATE_VERBS, {
        "change": ("change_main", "test verb"), "look": ("look_main", "test verb"),
        "faketrain": ("train_main", "test training verb")})
    monkeypatch.setitem(stages.TRAINING_VERBS, "faketrain", stages.StageSpec(
        "faketrain", "faketrain", "state_verbs_mod:TrainCfg", "state_verbs_mod:run", "fine-tuning", "tested"))
    return module


def test_a_stage_changing_process_state_does_not_leak_into_the_next(tmp_path, state_verbs):
    import random

    import numpy as np

    from foundry.pipeline import load_recipe, run_recipe

    recipe = {"name": "t", "out_dir": str(tmp_path / "run"), "stages": [
        {"name": "a", "verb": "change", "args": ["--out", "{out}"]},
        {"name": "b", "verb": "look", "args": ["--out", "{out}"]},
        {"name": "t", "verb": "faketrain", "args": ["value=5"], "config": {"out_dir": "{out}", "value": 2}},
    ]}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    threads = torch.get_num_threads()
    torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    expected = {"torch": torch.rand(1).item(), "numpy": float(np.random.rand()), "random": random.random()}
    torch.set_rng_state(torch_rng), np.random.set_state(numpy_rng), random.setstate(python_rng)
    try:
        run_recipe(load_recipe(path), path)
        seen = json.loads((tmp_path / "run" / "b" / "state.json").read_text())
        assert seen == {"threads": threads, "dtype": "torch.float32", "grad": True, "deterministic": False,
                        **expected}
        # the training verb: its config validated by the registry's class and handed to its run function
        [(cfg, resume, train_threads)] = state_verbs.CALLS
        assert type(cfg).__name__ == "TrainCfg" and cfg.value == 5 and resume is False and train_threads == threads
        assert (tmp_path / "run" / ".pipeline" / "t.yaml").is_file()
        assert torch.get_num_threads() == threads and torch.get_default_dtype() == torch.float32
        assert torch.is_grad_enabled() and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)
        torch.use_deterministic_algorithms(False)


def test_a_training_stage_error_is_one_line_and_the_stage_fails(tmp_path, state_verbs, capsys):
    from foundry.errors import FoundryError
    from foundry.pipeline import load_recipe, run_recipe

    recipe = {"name": "t", "out_dir": str(tmp_path / "run"), "stages": [
        {"name": "t", "verb": "faketrain", "config": {"out_dir": "{out}", "valeu": 2}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(FoundryError, match=r"stage 't' failed \(exit 1\)"):
        run_recipe(load_recipe(path), path)
    err = capsys.readouterr().err
    assert "foundry: error:" in err and "valeu" in err and len(err.strip().splitlines()) == 1
