#!/usr/bin/env bash
# Installs the Debian package dataset-fashion-mnist (MIT, Zalando SE) when apt is usable.
# Never fails the set-up: without apt it says how to get the data.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: present in $DIR"
  exit 0
fi
echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist (if apt is usable)"
"$(dirname "$0")/apt-install.sh" dataset-fashion-mnist && exit 0
cat <<MSG
Fashion-MNIST is not installed and apt is not usable here. Either
  sudo apt-get install dataset-fashion-mnist        (Debian/Ubuntu), or
  download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist
  into a directory and pass --data fashion-mnist:DIR.
MSG
exit 0
