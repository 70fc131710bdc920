"""The training progress bar: it follows whichever budget will end the run, steps or seconds.

A time-boxed run (`max_seconds`) keeps a large `max_steps` as a ceiling, so a bar counting steps showed
0% and an ETA of hours for a four-minute run. Here the bar's fraction is the further along of
step / max_steps and elapsed / max_seconds (the same rule the lr schedule follows, `schedule_position`),
and the time left is the sooner of the time budget's end and the step budget's end at the current step
rate. The line also carries tokens/s, MFU and the loss as the loop last logged them.
"""

from __future__ import annotations

import sys

from foundry.utils.timefmt import clock

RESOLUTION = 1000  # the bar counts thousandths of the run


def progress_state(step: int, max_steps: int, elapsed: float, max_seconds: float | None,
                   start_step: int = 0, start_elapsed: float = 0.0) -> dict:
    """{"fraction", "left_s", "bound"}: how far the run is (0..1), the seconds left (None while the step
    rate is unknown and there is no time budget), and which budget ends it ("time" or "steps").

    The step rate is measured over this process only (`start_step`, `start_elapsed`: where a resumed run
    started), so a resume does not count the previous process's steps as instantaneous."""
    fraction = step / max_steps if max_steps else 0.0
    by_time = None
    if max_seconds:
        fraction = max(fraction, elapsed / max_seconds)
        by_time = max(0.0, max_seconds - elapsed)
    ran, took = step - start_step, elapsed - start_elapsed
    by_steps = (max_steps - step) * took / ran if ran > 0 and took > 0 else None
    candidates = [(v, name) for v, name in ((by_time, "time"), (by_steps, "steps")) if v is not None]
    left, bound = min(candidates) if candidates else (None, "time" if max_seconds else "steps")
    return {"fraction": min(1.0, fraction), "left_s": left, "bound": bound}


def progress_text(step: int, max_steps: int, elapsed: float, max_seconds: float | None, state: dict,
                  tokens_per_s: float | None = None, mfu: float | None = None, loss: float | None = None) -> str:
    """The words after the bar: time used of the budget, step, throughput, MFU, time left, loss."""
    parts = [f"{clock(elapsed)} of {clock(max_seconds)} time box" if max_seconds else f"{clock(elapsed)} elapsed",
             f"step {step:,}" + ("" if max_seconds and state["bound"] == "time" else f"/{max_steps:,}")]
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tok/s")
    if mfu is not None:
        parts.append(f"MFU {mfu:.1%}")
    parts.append(f"{clock(state['left_s'])} left")
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    return " · ".join(parts)


class BudgetProgress:
    """A tqdm bar over thousandths of the run, its text from `progress_text`; one `update` per step."""

    def __init__(self, desc: str, max_steps: int, max_seconds: float | None, step: int = 0,
                 elapsed: float = 0.0, file=None, mininterval: float = 0.5):
        from tqdm.auto import tqdm

        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.start_step, self.start_elapsed = step, elapsed
        self.metrics: dict = {}
        self.bar = tqdm(total=RESOLUTION, desc=desc, file=file or sys.stderr, dynamic_ncols=True,
                        mininterval=mininterval, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.update(step, elapsed)

    def update(self, step: int, elapsed: float, **metrics) -> dict:
        """Move the bar to `step` at `elapsed` seconds; `metrics` (tokens_per_s, mfu, loss) stay until replaced."""
        self.metrics.update({k: v for k, v in metrics.items() if v is not None})
        state = progress_state(step, self.max_steps, elapsed, self.max_seconds, self.start_step, self.start_elapsed)
        self.bar.set_postfix_str(progress_text(step, self.max_steps, elapsed, self.max_seconds, state,
                                               **self.metrics), refresh=False)
        target = int(state["fraction"] * RESOLUTION)
        if target != self.bar.n:
            self.bar.update(target - self.bar.n)  # tqdm redraws at most every `mininterval` seconds
        return state

    def restart(self, step: int, elapsed: float) -> None:
        """After a rollback: the step went back, the clock did not."""
        self.start_step, self.start_elapsed = step, elapsed
        self.bar.n = 0
        self.update(step, elapsed)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.refresh()
        self.bar.close()
