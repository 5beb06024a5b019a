"""Run llama.cpp's own server test suite against the workbench's OpenAI-compatible API.

On demand, not part of the workbench's tests:

    .venv/bin/python bench/peer_suite/run.py [--files test_chat_completion.py ...] [-k EXPR] [--port 18080]

The tests come from the pinned llama-cpp-python sdist (its vendor/llama.cpp/tools/server/tests):
the copy unpacked under ~/.cache/model-workbench/llama-server/ when there is one, else
`pip download --no-deps --no-binary :all: llama-cpp-python==PIN` into a temporary folder.
workbench_plugin.py replaces their ServerProcess so each test talks to `webui.py --api-only`
serving the sample GGUF. Every failure is then classified by classification.py (which says,
for each test, why it cannot pass against a standard OpenAI server, read from the test's
code): (a) a llama.cpp extension, (b) tied to their test model's exact output, or (c) a
standard OpenAI behaviour the workbench gets wrong. Writes bench/peer_suite/results.json
and results.md (override with --out).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from classification import CLASSES, classify  # noqa: E402

PIN = "0.3.36"
CACHE = os.path.expanduser(f"~/.cache/model-workbench/llama-server/llama_cpp_python-{PIN}")
TESTS_IN_SDIST = os.path.join("vendor", "llama.cpp", "tools", "server", "tests")
# The test files about OpenAI's endpoints (chat, completions, tools, embeddings) and the server around them
# (health, models, keys, CORS, tokenizer); the rest test llama-server features the workbench does not have
# (router, slots save, LoRA routes, speculative decoding, MCP, Anthropic/GCP/Responses compat, infill, rerank...).
DEFAULT_FILES = ["test_basic.py", "test_chat_completion.py", "test_completion.py", "test_tool_call.py",
                 "test_embedding.py", "test_tokenize.py", "test_security.py"]


def tests_dir(work: str) -> str:
    """llama.cpp's server tests folder: the cached sdist's, or a freshly downloaded one's."""
    cached = os.path.join(CACHE, TESTS_IN_SDIST)
    if os.path.isfile(os.path.join(cached, "utils.py")):
        return cached
    print(f"downloading the llama-cpp-python {PIN} sdist...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={PIN}", "-d", work], check=True)
    sdist = glob.glob(os.path.join(work, "llama_cpp_python-*.tar.gz"))[0]
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if f"/{TESTS_IN_SDIST}/" in m.name
                   or "/vendor/llama.cpp/models/templates/" in m.name]
        tar.extractall(work, members=members, filter="data")
    return os.path.join(work, f"llama_cpp_python-{PIN}", TESTS_IN_SDIST)


def run(files: list[str], keyword: str | None, port: int, out: str, slow: bool = False) -> dict:
    work = tempfile.mkdtemp(prefix="peer-suite-")
    tests = tests_dir(work)
    results, logs = os.path.join(work, "results.jsonl"), os.path.join(work, "logs")
    os.makedirs(logs)
    env = {**os.environ, "PYTHONPATH": HERE, "PEER_SUITE_WORKBENCH": ROOT, "PEER_SUITE_RESULTS": results,
           "PEER_SUITE_LOGS": logs, "PEER_SUITE_PYTHON": sys.executable, "PORT": str(port)}
    env.pop("SLOW_TESTS", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "workbench_plugin", "-p", "no:cacheprovider", "-q",
           "--rootdir", tests, "-o", "addopts=", *[os.path.join("unit", f) for f in files]]
    if keyword:
        cmd += ["-k", keyword]
    if not slow:  # their slow tests download 3-8B models; on the sample model they only time out on a CPU
        cmd += ["-m", "not slow"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=tests, env=env, capture_output=True, text=True)
    if not os.path.exists(results):
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        raise SystemExit("pytest ran no test")
    rows = [json.loads(line) for line in open(results)]
    for row in rows:
        if row["outcome"] == "failed":
            row["class"], row["why"] = classify(row["nodeid"])
    summary = {
        "suite": f"llama.cpp server tests from llama-cpp-python {PIN} ({tests})",
        "files": files, "slow_tests": slow, "seconds": round(time.time() - started),
        "total": len(rows),
        "passed": sum(r["outcome"] == "passed" for r in rows),
        "skipped": sum(r["outcome"] == "skipped" for r in rows),
        "failed": sum(r["outcome"] == "failed" for r in rows),
        "failed_by_class": {c: sum(r.get("class") == c for r in rows) for c in [*CLASSES, "unclassified"]},
        "tests": rows,
    }
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(summary))
    print(proc.stdout[-1500:])
    print(f"server logs: {logs}")
    return summary


def markdown(s: dict) -> str:
    lines = [f"# {s['suite']}", "",
             f"{s['total']} tests: {s['passed']} passed, {s['skipped']} skipped, {s['failed']} failed "
             f"({s['seconds']} s).", "", "| Class | Failed |", "|---|---|"]
    lines += [f"| {c}: {CLASSES.get(c, 'no classification yet: read the test')} | {n} |"
              for c, n in s["failed_by_class"].items()]
    for c in [*CLASSES, "unclassified"]:
        rows = [r for r in s["tests"] if r.get("class") == c]
        if rows:
            lines += ["", f"## ({c}) {CLASSES.get(c, 'unclassified')}", ""]
            lines += [f"- `{r['nodeid']}`: {r['why']}  \n  got: `{r['message'].splitlines()[0][:200]}`"
                      if r["message"] else f"- `{r['nodeid']}`: {r['why']}" for r in rows]
    passed = [r["nodeid"] for r in s["tests"] if r["outcome"] == "passed"]
    lines += ["", "## Passed", "", *[f"- `{n}`" for n in passed], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", nargs="+", default=DEFAULT_FILES, help="test files of tools/server/tests/unit")
    p.add_argument("-k", dest="keyword", help="pytest -k expression")
    p.add_argument("--port", type=int, default=18080, help="port the servers listen on (the tests' PORT)")
    p.add_argument("--slow", action="store_true", help="also run their tests marked slow (real 3-8B models)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results path without extension")
    args = p.parse_args(argv)
    s = run(args.files, args.keyword, args.port, args.out, args.slow)
    print(f"{s['total']} tests: {s['passed']} passed, {s['skipped']} skipped, {s['failed']} failed; "
          f"by class: {s['failed_by_class']}")
    return 1 if s["failed_by_class"]["c"] or s["failed_by_class"]["unclassified"] else 0


if __name__ == "__main__":
    sys.exit(main())
