#!/usr/bin/env bash
# Installs the Debian package dataset-fashion-mnist (MIT, Zalando SE) when apt is usable.
# Never fails the set-up: without apt it says how to get the data.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: present in $DIR"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -q >/dev/null && \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null && exit 0
fi
cat <<MSG
Fashion-MNIST is not installed and apt is not usable here. Either
  sudo apt-get install dataset-fashion-mnist        (Debian/Ubuntu), or
  download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist
  into a directory and pass --data fashion-mnist:DIR.
MSG
exit 0
