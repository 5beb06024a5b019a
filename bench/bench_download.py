"""Downloads against the raw libraries, from one local fake hub (tests/downloads/hub_server.py), as JSON.

The sample GGUF (94 MiB) is fetched three ways from the same server in the same run: DownloadService
(resumable, sha256 verified, atomic), huggingface_hub's own `hf_hub_download` into a temporary cache,
and a bare httpx2 GET streamed into a file (no hashing, no checks). Also: bytes read to plan the file
from its header, and bytes served when a download killed at half (here: cancelled) resumes.

    .venv/bin/python bench/bench_download.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
NAME = os.path.basename(GGUF)
MiB = 2**20


def best_of(fn, repeat: int, setup=lambda: None) -> float:
    times = []
    for _ in range(repeat):
        setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    from tests.downloads.hub_server import FakeHub
    from workbench.downloads.service import DownloadService
    from workbench.paths import Paths

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = os.path.getsize(GGUF)
    work = tempfile.mkdtemp(prefix="bench-download-")
    os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_CACHE=os.path.join(work, "hf-cache"))
    result: dict = {"file_bytes": size}
    with FakeHub({"org/smol": {NAME: GGUF}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        paths = Paths(os.path.join(work, "root"))
        os.makedirs(paths.models)
        service = DownloadService(paths)
        listing = service.find("org/smol")
        result["plan_bytes_fetched"] = listing.bytes_fetched

        def clean():
            for folder in (paths.models, os.environ["HF_HUB_CACHE"]):
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(paths.models)

        def ours():
            p = service.wait(service.enqueue(listing, "Q4_1"), 300)
            assert p.state == "done", p.message

        def hf_hub():
            from huggingface_hub import hf_hub_download

            hf_hub_download("org/smol", NAME, revision=listing.commit, endpoint=hub.url,
                            cache_dir=os.environ["HF_HUB_CACHE"])

        def raw():
            import httpx2

            with httpx2.stream("GET", f"{hub.url}/org/smol/resolve/{listing.commit}/{NAME}",
                               follow_redirects=True) as r, open(os.path.join(work, "raw.bin"), "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)

        for label, fn in (("workbench", ours), ("hf_hub_download", hf_hub), ("raw_httpx2", raw)):
            s = best_of(fn, args.repeat, clean)
            result[label] = {"seconds": round(s, 3), "MiB_per_s": round(size / MiB / s, 1)}

        # Resume: cancel at about half, then go on; count what the server sends the second time.
        clean()  # (a copy in huggingface_hub's cache would be linked, not fetched)
        hub.faults.throttle_bps = 50 * MiB
        job = service.enqueue(listing, "Q4_1")
        while service.progress(job).done_bytes < size // 2:
            time.sleep(0.01)
        service.cancel(job)
        service.wait(job, 30)
        hub.faults.throttle_bps = None
        time.sleep(0.3)
        kept = service.unfinished()[0]["done_bytes"]
        hub.reset_counts()
        assert service.wait(service.resume(NAME), 300).state == "done"
        result["resume"] = {"kept_bytes": kept, "served_on_resume": hub.bytes_served(NAME)}
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "download.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
