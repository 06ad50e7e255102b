#!/usr/bin/env bash
# README command 1: set up, train the CE baseline on long-tailed Fashion-MNIST (cpu preset,
# about 1.5 minutes on 2 cores) and print the leaderboard of every finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ltbench run --method ce --dataset fmnist_lt --preset cpu
.venv/bin/ltbench report
