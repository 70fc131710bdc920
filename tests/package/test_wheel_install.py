"""Installed as a wheel (as users install from a registry), foundry still finds its recipes and bundled
data: the quickstart's first stages run from the installed package, nowhere near the checkout."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_first_stages_from_a_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("foundry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "foundry/_bundled/recipes/quickstart.yaml" in names
    assert {f"foundry/serve/static/{f}" for f in ("chat.html", "chat.js", "rate.html", "rate.js", "style.css")} <= set(names)
    assert any(n.startswith("foundry/_bundled/data/general/kjv/") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout on sys.path
    probe = subprocess.run([sys.executable, "-c", "import foundry, sys; print(foundry.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(site))
    run = subprocess.run([sys.executable, "-m", "foundry.cli", "quickstart", "--out", "qs", "--until", "data_domain"],
                         env=env, cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    manifest = json.loads((work / "qs" / "data_domain" / "manifest.json").read_text())
    assert manifest["totals"]["documents"]["kept"] > 100
    assert manifest["sources"][0]["path"].startswith(str(site))  # the wheel's own bundled data, not the checkout's
    assert not (work / "qs" / "tokenizer").exists()  # --until stopped there
