#!/usr/bin/env bash
# On demand, never at start: builds llama.cpp's own `rpc-server` binary from the llama.cpp sources
# vendored in the pinned llama-cpp-python, for a helper host that has no Python. (Hosts with the
# workbench installed need no build: `python -m workbench rpc-server` runs the same server from the
# library ./start.sh built.) Cached: a second run prints the path at once.
# Usage: scripts/build-rpc-server.sh [OUTDIR]  (default ~/.cache/model-workbench/rpc-server)
#        CMAKE_ARGS="-DGGML_CUDA=on" scripts/build-rpc-server.sh   for a CUDA host
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$HOME/.cache/model-workbench/rpc-server}
PKG=$(grep '^llama-cpp-python==' requirements.txt)
mkdir -p "$OUT"
STAMP="$PKG ${CMAKE_ARGS:-} $(cat scripts/llama-cpp-source.sh scripts/llama-cpp-patches/*.patch | sha256sum | cut -c1-16)"
if [ -x "$OUT/bin/rpc-server" ] && [ "$(cat "$OUT/.version" 2>/dev/null)" = "$STAMP" ]; then
  echo "$OUT/bin/rpc-server"; exit 0
fi
command -v cmake >/dev/null || { echo "error: cmake is needed (pip install cmake, or your package manager)" >&2; exit 1; }
echo "[rpc-server] fetching the $PKG sources and applying our patches (scripts/llama-cpp-patches)" >&2
rm -rf "$OUT/src"
SRC=$(scripts/llama-cpp-source.sh "$OUT/src")/vendor/llama.cpp
echo "[rpc-server] configuring and building (several minutes on 2 cores)" >&2
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF ${CMAKE_ARGS:-} >/dev/null
# The target is ggml-rpc-server in this llama.cpp (rpc-server in older ones).
target=$(grep -q "ggml-rpc-server" "$SRC/tools/rpc/CMakeLists.txt" 2>/dev/null && echo ggml-rpc-server || echo rpc-server)
cmake --build "$OUT/build" --target "$target" -j"$(nproc)" 2>&1 | grep -E "error|Linking" >&2 || true
mkdir -p "$OUT/bin"
cp "$OUT/build/bin/$target" "$OUT/bin/rpc-server" \
  || { echo "error: the build made no $target; see the cmake output above" >&2; exit 1; }
cp -P "$OUT"/build/bin/*.so* "$OUT/bin/" 2>/dev/null || true
echo "$STAMP" > "$OUT/.version"
rm -rf "$OUT/src"
echo "$OUT/bin/rpc-server"
