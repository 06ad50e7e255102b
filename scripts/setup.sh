#!/usr/bin/env bash
# Set up ltbench from nothing on Debian (as root, or with sudo): system packages, a virtualenv in
# .venv with torch 2.14.1 / torchvision 0.29.1, ltbench itself (editable, with the dev extra) and
# the real Fashion-MNIST files. Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

apt_packages=(python3-venv dataset-fashion-mnist ${LTBENCH_EXTRA_APT:-})
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "== pip install torch==2.14.1 torchvision==0.29.1"
  .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
echo "== pip install -e .[dev]"
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
echo "== ready: $(.venv/bin/python -c 'import torch, ltbench; print("ltbench", ltbench.__version__, "torch", torch.__version__)')"
