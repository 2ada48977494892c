#!/usr/bin/env bash
# Set up .venv with the test tools and run the whole test suite; exits with pytest's result.
# The browser tests drive Debian's Chromium and the moderation-log tests start a real PostgreSQL
# server: both are installed here when missing and this machine allows it (root with apt-get);
# elsewhere those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium for the browser tests (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install Chromium: the browser tests will be skipped"
fi
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing PostgreSQL for the moderation-log tests (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
    || echo "could not install PostgreSQL: its tests will be skipped"
fi
bash scripts/setup.sh --dev
# Test files run in parallel, one per worker at a time (pytest-xdist, --dist loadfile keeps a file's
# module fixtures on one worker): much of the suite is single-threaded Python (ONNX export
# tracing, process start-up, servers, the browser), so two workers on two cores finish the suite
# in about two thirds of the time. More than four workers would mostly multiply memory.
workers=${VITRINA_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))')}
parallel=()
if .venv/bin/python -c 'import xdist' 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
else
  echo "pytest-xdist is missing: the tests run in one process"
fi
set +e
.venv/bin/python -m pytest "${parallel[@]}" --durations=15 "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
exit $status
