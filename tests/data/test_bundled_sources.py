"""Every bundled data folder says where its text came from, in a SOURCE.yaml that parses and names a license."""

from pathlib import Path

import pytest

from foundry.data.sources import read_sidecar

DATA = Path(__file__).resolve().parents[2] / "data"
SIDECARS = sorted(DATA.rglob("SOURCE.yaml"))


def test_every_bundled_folder_has_a_sidecar():
    folders = {p.parent for p in DATA.rglob("*") if p.is_file() and p.name not in ("README.md",)}
    top_level = {f for f in folders if f.parent == DATA or f.parent.parent == DATA}
    covered = {s.parent for s in SIDECARS}
    missing = [str(f) for f in top_level if not any(f == c or c in f.parents for c in covered)]
    assert not missing, f"data folders without SOURCE.yaml: {missing}"


@pytest.mark.parametrize("sidecar", SIDECARS, ids=[str(s.relative_to(DATA)) for s in SIDECARS])
def test_sidecar_parses_and_names_a_license(sidecar):
    meta = read_sidecar(sidecar)
    assert meta.get("license"), f"{sidecar}: no license"
    assert any(meta.get(k) for k in ("origin", "source", "generator", "generated_by")), f"{sidecar}: no origin"
