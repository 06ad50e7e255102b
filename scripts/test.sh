#!/usr/bin/env bash
# README command 2 (and what CI runs): set up from nothing, then run the test suite.
#
# The Slurm tests run against a real one-node cluster on this machine (scripts/slurm-cluster.sh),
# brought up here and taken down afterwards (unless it was already up). It needs root or
# password-less sudo; without them, or if it cannot start outside CI, those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
can_root() { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }

if can_root; then
  # chromium: the browser test of the HTML leaderboard (tests/test_browser.py)
  export LTBENCH_EXTRA_APT="${LTBENCH_EXTRA_APT:-} munge slurm-client slurmctld slurmd slurmdbd mariadb-server chromium"
fi
bash scripts/setup.sh

if can_root; then
  if $SUDO bash scripts/slurm-cluster.sh status >/dev/null 2>&1; then
    echo "== test Slurm cluster already up: leaving it up"
  elif $SUDO bash scripts/slurm-cluster.sh up; then
    trap '$SUDO bash scripts/slurm-cluster.sh down || true' EXIT
  elif [ "${CI:-}" = "true" ]; then
    echo "the test Slurm cluster did not come up; see /var/lib/ltbench-slurm/log" >&2
    exit 1
  else
    echo "== the test Slurm cluster did not come up: the Slurm tests will be skipped" >&2
  fi
else
  echo "== no root or password-less sudo: no test Slurm cluster, the Slurm tests will be skipped" >&2
fi

echo "== ruff check, ruff format --check"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/python -m pytest -q "$@"
