"""Durations for people: H:MM:SS or M:SS."""

from __future__ import annotations


def clock(seconds: float | None) -> str:
    """Seconds as H:MM:SS or M:SS ('?' when unknown)."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
