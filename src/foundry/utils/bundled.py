"""Where the bundled corpora (`data/`) and recipes (`recipes/`) are: the checkout for an editable install,
the package's own `_bundled/` folder for a wheel (setup.py copies them there at build time)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def bundled_root() -> Path:
    """The folder holding `data/` and `recipes/`: what the recipes' `{repo}` placeholder stands for."""
    installed = _PACKAGE / "_bundled"
    return installed if (installed / "recipes").is_dir() else _PACKAGE.parents[1]
