#!/usr/bin/env bash
# Installs what psync needs to build, test and run its demo on Debian/Ubuntu,
# only the packages that are missing; non-interactive; uses sudo when not root.
set -euo pipefail

packages=(cmake make g++ pkg-config libboost-dev libeigen3-dev catch2 libbenchmark-dev zlib1g-dev libssl-dev
          dataset-fashion-mnist gnuplot-nox python3)
# Extra packages a caller may ask for (e.g. iperf3 for the TCP bench, iproute2 for netns,
# libopenmpi-dev openmpi-bin for the optional MPI transport, psync::mpi: scripts/test.sh).
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
