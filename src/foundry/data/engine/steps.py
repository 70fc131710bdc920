"""The machinery both engine pipelines share: a foundry step as datatrove runs it (one call per task, a failure
as one line), task directories that appear whole, the executors (local, Slurm, Ray), running the stages with
the engine's chatter in the work directory's log, and the test hook that kills a run as a lost machine would."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from foundry.errors import DataError

FAULT_ENV = "FOUNDRY_DATA_FAULT"  # "STAGE:RANK": SIGKILL this process as that task starts (tests kill a run)


# ---- helpers ----------------------------------------------------------------------------------------
_forking_parent: list[int] = []  # while the engine runs: the pid that forks (each child dies with its parent)


def _remember_parent() -> None:
    if _forking_parent:
        _forking_parent[1:] = [os.getpid()]


def _die_with_parent() -> None:
    """In a process forked while the engine runs (datatrove's manager, its pool workers): SIGKILL from the
    kernel when the parent dies (Linux's PR_SET_PDEATHSIG), so a killed driver leaves no helper behind."""
    if not _forking_parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: helpers end as datatrove ends them
        return
    if os.getppid() != _forking_parent[-1]:  # the parent died before the request took effect
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_remember_parent, after_in_child=_die_with_parent)


def fault(stage: str, rank: int) -> None:
    """Test hook: kill the whole run (this process group: driver, engine manager, workers) as a lost
    machine would, when task `rank` of `stage` starts. Only set it on a process started in its own session."""
    if os.environ.get(FAULT_ENV) == f"{stage}:{rank}":
        os.killpg(os.getpgrp(), signal.SIGKILL)


def save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@contextlib.contextmanager
def task_dir(final: Path):
    """A task's output directory appears whole or not at all (a killed task leaves only a .tmp to redo)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def run_logged(stages: list, work: Path) -> None:
    """Run the pipeline, the engine's chatter in work/engine.log.

    Local and Slurm stages are chained by `depends` (the last one runs or submits the ones before). Ray's
    executor only logs a task that failed its retries, and a stage depending on it re-checks every 2 minutes,
    forever; so Ray stages run one after another here, each checked for unfinished tasks, whose recorded
    one-line error (`errors/`) is raised as the local executor raises it.

    On a DataError nothing is left behind: bad input fails the same way on every try and its fix changes the
    fingerprint, and a full disk needs the space back. Anything else (a killed worker) keeps the finished
    tasks for a resume.
    """
    quiet()
    log = open(work / "engine.log", "a")
    _forking_parent[:] = [os.getpid(), os.getpid()]  # [marker, the forking process's pid]
    try:
        with contextlib.redirect_stderr(log):
            for stage in (stages if stages[-1].depends is None else stages[-1:]):
                stage.run()
                check_finished(stage, work)
    except DataError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        _forking_parent.clear()
        with contextlib.suppress(OSError):  # on a full disk the log's last flush fails too; the error says why
            log.close()


def check_finished(stage, work: Path) -> None:
    """After a blocking stage: every task finished, or the first unfinished one's error as a DataError."""
    from datatrove.executor import SlurmPipelineExecutor

    if isinstance(stage, SlurmPipelineExecutor):  # submitted, not run: the array finishes later
        return
    unfinished = stage.get_incomplete_ranks(skip_completed=True)
    if not unfinished:
        return
    name = stage.pipeline[0].stage
    for rank in unfinished:
        recorded = work / "errors" / f"{name}_{rank:05d}"
        if recorded.is_file():
            raise DataError(recorded.read_text())
    raise DataError(f"{work}: data {name} tasks {unfinished[:5]} did not finish (the engine gave up on them); "
                    f"their logs are in {work / 'logs' / name}")


def is_write_failure(exc: OSError) -> bool:
    """A full disk or quota (ENOSPC, EDQUOT, EFBIG), or a short write (numpy's "N requested and M written")."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or (
        exc.errno is None and "requested and" in str(exc) and "written" in str(exc))


class Step:
    """A foundry step run by datatrove: one call per task (rank), output written under the work directory."""
    stage = ""

    def __init__(self, job):  # a PrepareJob or a TokenizeJob
        from datatrove.utils.stats import Stats

        self.job = job
        self.stats = Stats(f"foundry {self.stage}")

    def __repr__(self) -> str:
        return f"foundry: {self.stage}"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        fault(self.stage, rank)
        cpu0 = time.process_time()
        try:
            self.run_task(rank, world_size)
        except Exception as exc:
            error = self._error(exc, rank)
            # the driver of an executor that only logs a failed task (Ray) reads the one line from here
            with contextlib.suppress(OSError):
                (Path(self.job.work) / "errors").mkdir(exist_ok=True)
                (Path(self.job.work) / "errors" / f"{self.stage}_{rank:05d}").write_text(str(error))
            if error is exc:
                raise
            raise error from exc
        work = Path(self.job.work)
        (work / "cpu").mkdir(exist_ok=True)
        (work / "cpu" / f"{self.stage}_{rank:05d}").write_text(str(time.process_time() - cpu0))
        return None

    def _error(self, exc: Exception, rank: int) -> DataError:
        """A failed task as one line naming its input (bad input, a bug) or its output (a full disk)."""
        if isinstance(exc, DataError):
            return exc
        if isinstance(exc, OSError) and is_write_failure(exc):
            return DataError(f"{self.output()}: cannot write ({exc}; is the disk full?); data {self.stage} task "
                             f"{rank} stopped and nothing already there was replaced")
        return DataError(f"{self.where(rank)}: data {self.stage} task {rank} failed ({type(exc).__name__}: {exc})")

    def where(self, rank: int) -> str:
        return self.job.work

    def output(self) -> str:
        """What the run writes in the end: the dataset directory, or its tokenizer's tokens folder."""
        job = self.job
        return job.out

    def run_task(self, rank: int, world_size: int) -> None:
        raise NotImplementedError


class FinalStep(Step):
    """The one task that writes the output (merge, shard): a failure names the output."""

    def where(self, rank):
        return self.output()


EXECUTORS = ("local", "slurm", "ray")


def make_executor(kind: str, pipeline: list, tasks: int, workers: int, logs: Path, depends, options: dict):
    """The engine's executor for one stage; `options` pass through (Slurm: partition, time, ...)."""
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logs),
                                     depends=depends, start_method=options.get("start_method", "fork"))
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(pipeline, tasks=tasks, logging_dir=str(logs), depends=depends,
                                     workers=workers if workers > 0 else -1, **options)
    if kind == "ray":
        import ray
        from datatrove.executor import RayPipelineExecutor

        if not ray.is_initialized():  # joins RAY_ADDRESS's cluster, or starts one on this machine
            # the workers' output stays in the task logs, not after foundry's one-line error on the terminal
            ray.init(log_to_driver=False)

        # no depends: _run_logged runs Ray stages in order itself (datatrove's wait on a failed one never ends)
        return RayPipelineExecutor(pipeline, tasks=tasks, logging_dir=str(logs),
                                   workers=workers if workers > 0 else -1, **options)
    raise DataError(f"--executor must be one of inline, {', '.join(EXECUTORS)}; got {kind!r}")


def quiet():
    """The engine's own log goes to the work directory's logs, not to the terminal (errors are one line)."""
    from datatrove.utils.logging import logger

    logger.remove()
