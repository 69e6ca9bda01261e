#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages when apt is usable here (root or
# passwordless sudo). Exit 0 when installed, 1 when apt is not usable or the install failed;
# the callers decide what that means (the set-up never fails on it).
set -u
SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; } || exit 1
$SUDO apt-get update -q >/dev/null && \
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null
