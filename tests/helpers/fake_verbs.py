"""Verbs made up by a test: a module written to tmp_path, importable for the test's length, and registered in the
command line's verb table (both undone by monkeypatch)."""

from __future__ import annotations

import importlib
import sys


def install_verb_module(tmp_path, monkeypatch, name: str, source: str, verbs: dict[str, tuple[str, str]]):
    """Write `source` as module `name`, register each verb -> (function name, help) and return the module."""
    from foundry import cli

    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    for verb, (function, help_text) in verbs.items():
        monkeypatch.setitem(cli.VERBS, verb, (f"{name}:{function}", help_text))
    return importlib.import_module(name)
