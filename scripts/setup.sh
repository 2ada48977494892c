#!/usr/bin/env bash
# Create the virtual environment .venv and install vitrina with its training stack into it
# (and the test tools when called with --dev). Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
target=".[train]"  # the core serves exported models; the demo trains too
[ "${1:-}" = "--dev" ] && target=".[dev]"
echo "installing vitrina ($target) into .venv (the first time this downloads PyTorch and takes a few minutes)"
.venv/bin/python -m pip install --disable-pip-version-check -q -e "$target" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import vitrina, torch; print(f'vitrina {vitrina.__version__}, torch {torch.__version__}')"
