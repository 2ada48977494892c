#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded demo photos.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vitrina demo "$@"
