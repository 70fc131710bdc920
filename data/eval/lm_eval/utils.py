"""Helpers for the lm-evaluation-harness task YAMLs in this folder (loaded by lm-eval's `!function`)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def foundry_task_splits(data_files: str, **_):
    """A foundry task file (data/eval/*.jsonl) as lm-eval splits: "test" (scored) and "fewshot".

    `data_files` is relative to this folder, so the task runs from any working directory; the `split`
    field of each item decides its split, as `foundry.eval.tasks.load_task` does. Extra keyword
    arguments (lm-eval passes the task's metadata too) are ignored.
    """
    import datasets

    rows = datasets.load_dataset("json", data_files=str(HERE / data_files), split="train")
    is_fewshot = [s == "fewshot" for s in rows["split"]] if "split" in rows.column_names else [False] * len(rows)
    return datasets.DatasetDict({
        "test": rows.select([i for i, f in enumerate(is_fewshot) if not f]),
        "fewshot": rows.select([i for i, f in enumerate(is_fewshot) if f]),
    })
