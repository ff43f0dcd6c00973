#!/usr/bin/env bash
# Build KenLM's lmplz and build_binary from the kenlm sdist (the PyPI wheel has the
# query module only) and install them into the virtualenv's bin/. Cached: does
# nothing when both tools are already there. Needs CMake, a C++ compiler and
# Boost/zlib/bz2/lzma headers (installed with apt-get when missing and running as root).
set -euo pipefail

VENV=${1:-.venv}
KENLM_VERSION=${KENLM_VERSION:-0.3.0}
BIN="$VENV/bin"
if [[ -x "$BIN/lmplz" && -x "$BIN/build_binary" ]]; then
  echo "kenlm tools present: $BIN/lmplz $BIN/build_binary"
  exit 0
fi

DEBS=(cmake g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
      zlib1g-dev libbz2-dev liblzma-dev)
missing=()
for deb in "${DEBS[@]}"; do
  dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: KenLM build needs these Debian packages: ${missing[*]}" >&2
    echo "       run: sudo apt-get install -y ${missing[*]}   (then make setup again)" >&2
    exit 1
  fi
  echo "installing build dependencies: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN/pip" download --quiet --no-deps --no-binary kenlm -d "$WORK" "kenlm==$KENLM_VERSION"
tar -xzf "$WORK"/kenlm-"$KENLM_VERSION".tar.gz -C "$WORK"
SRC="$WORK/kenlm-$KENLM_VERSION"
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF >/dev/null
cmake --build "$SRC/build" --target lmplz build_binary -j "$(nproc)"
install -m 0755 "$SRC/build/bin/lmplz" "$SRC/build/bin/build_binary" "$BIN/"
echo "kenlm tools installed: $BIN/lmplz $BIN/build_binary"
