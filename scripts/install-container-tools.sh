#!/usr/bin/env bash
# Installs podman, runc and debootstrap (Debian packages) when apt is usable, so that the
# tests can build and run the CPU image (tests/integration/test_container.py) without a
# Docker daemon. Never fails the set-up: without them that test skips and says why.
set -u
if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null; then
  echo "container tools: podman, runc and debootstrap present"
  exit 0
fi
echo "container tools: installing Debian packages podman runc debootstrap (if apt is usable)"
"$(dirname "$0")/apt-install.sh" podman runc debootstrap && exit 0
echo "container tools: podman/runc/debootstrap not installed (apt not usable); the image test will skip"
exit 0
