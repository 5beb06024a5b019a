"""Hundreds of API clients at once, some hanging up: the server stays responsive and answers everyone.

Waiting for a turn holds no thread (the API awaits the worker's replies), so this is what
used to freeze the app at 41 concurrent streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import pytest

import time

from tests.ui.test_webui import App, free_port

from .fakes import scratch, write_fake_model

CLIENTS = 500


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("many"))
    write_fake_model(root / "models", reply="Answer to {last_user}", token_delay_s=0.002)
    port = free_port()
    app = App("--api-only", "--api-port", str(port), "--model", "fake.json", "--parallel", "8", root=str(root),
              env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC"}, ready="OpenAI-compatible API")
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(base + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield base
    app.stop()


async def one(client: httpx.AsyncClient, i: int, hang_up: bool) -> str | None:
    body = {"model": "x", "messages": [{"role": "user", "content": f"question {i}"}], "stream": True,
            "max_tokens": 8}
    text = ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if hang_up and text:
                return None  # leaves mid-stream
            if line.startswith("data: {") and '"content"' in line:
                import json

                delta = json.loads(line[6:])["choices"][0]["delta"]
                text += delta.get("content") or ""
    return text


def test_five_hundred_clients_and_hang_ups_leave_the_server_responsive(api):
    base = api

    async def main():
        limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            tasks = [asyncio.create_task(one(client, i, hang_up=i % 10 == 0)) for i in range(CLIENTS)]
            await asyncio.sleep(0.5)
            health = await client.get("/health", timeout=5)  # answered while 500 streams are in flight
            results = await asyncio.gather(*tasks)
            after = await client.get("/health", timeout=5)
            return health, results, after

    # In a thread of its own: the session's browser (tests/e2e) keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        health, results, after = pool.submit(asyncio.run, main()).result()
    assert health.status_code == 200 and after.json()["model_loaded"] is True
    answered = {i: r for i, r in enumerate(results) if r is not None}
    assert len(answered) == CLIENTS - CLIENTS // 10
    assert all(text == f"Answer to question {i}" for i, text in answered.items())
