#!/usr/bin/env bash
# Install geomvision into ./.venv on a fresh Debian machine with Python 3.11.
# System libraries: Open3D needs libEGL/libGL/libusb/libgomp; its headless renderer needs software Vulkan.
# (.ci/run checks with `python -m geomvision.io.system_libraries` that nothing Open3D links is missing.)
set -euo pipefail
cd "$(dirname "$0")"
PKGS="libegl1 libusb-1.0-0 libgl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
# Debian's own Python needs python3-venv for "python3 -m venv".
"$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || PKGS="$PKGS python3-venv"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,distributed,partition]"
echo "geomvision installed in $(pwd)/.venv"
