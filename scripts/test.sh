#!/usr/bin/env bash
# Set up .venv with the test tools and run the whole test suite; exits with pytest's result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
exit $status
