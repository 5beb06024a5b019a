#!/usr/bin/env bash
# The llama.cpp the workbench builds: the pinned llama-cpp-python source package with our patches
# (scripts/llama-cpp-patches/*.patch) applied. Used by setup.sh (the Python package) and
# build-rpc-server.sh (the rpc-server binary), so both run the same kernels.
# Usage: scripts/llama-cpp-source.sh DIR   -> prints the unpacked package's root, DIR/llama_cpp_python-X
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$1
PKG=$(grep '^llama-cpp-python==' requirements.txt)
PY=$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )
command -v patch >/dev/null \
  || { echo "error: the 'patch' program is needed to apply scripts/llama-cpp-patches (apt install patch)" >&2; exit 1; }
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --no-binary :all: "$PKG" -d "$DIR" 2>&1 | grep -v WARNING >&2 || true
ls "$DIR"/llama_cpp_python-*.tar.gz >/dev/null 2>&1 \
  || { echo "error: could not download the $PKG source package" >&2; exit 1; }
tar -xzf "$DIR"/llama_cpp_python-*.tar.gz -C "$DIR"
root=$(ls -d "$DIR"/llama_cpp_python-*/ | head -n1)
root=${root%/}
for patch_file in scripts/llama-cpp-patches/*.patch; do
  patch -d "$root" -p1 --forward --quiet < "$patch_file" >&2 \
    || { echo "error: $patch_file does not apply to $PKG; rebase it (scripts/llama-cpp-patches/README.md)" >&2; exit 1; }
done
echo "$root"
