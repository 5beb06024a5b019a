#!/usr/bin/env bash
# Set up (idempotent), then launch the UI on 127.0.0.1:7860 with the sample model loaded.
# Extra arguments go to webui.py (e.g. ./start.sh --listen --port 8080).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
echo "[start] launching the workbench UI"
exec .venv/bin/python webui.py --model SmolLM2-135M-Instruct.Q4_1.gguf "$@"
