"""A GGUF split across llama.cpp RPC servers: two `python -m workbench rpc-server` processes on
127.0.0.1 hold the layers, the plan shows them as devices, and the greedy answer is the local one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from workbench.hardware import Hardware, RpcDevice
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.plan import GiB, MiB, make_plan, refusal
from workbench.rpc import RpcError, parse_endpoints
from workbench.services.model_service import ModelService

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def _rpc_built() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_rpc())
    except Exception:
        return False


needs_rpc = pytest.mark.skipif(not _rpc_built(), reason="llama-cpp-python was built without RPC (./start.sh builds "
                                                          "it with -DGGML_RPC=on)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_servers():
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", "rpc-server", "--port", str(p), "--threads", "1"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        deadline = time.monotonic() + 60
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the rpc-server did not start"
                    time.sleep(0.2)
        yield ",".join(f"127.0.0.1:{p}" for p in ports), procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cpu_seconds(proc: subprocess.Popen) -> float:
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def _greedy(service: ModelService) -> str:
    return service.complete(GenerationRequest(messages=QUESTION, params=GenParams(temperature=0, max_tokens=40))).text


@needs_rpc
def test_two_rpc_servers_hold_the_layers_and_answer_as_the_local_model(sample_gguf, rpc_servers, tmp_path):
    service = ModelService(Paths(str(tmp_path)))
    try:
        endpoints, procs = rpc_servers
        service.load(sample_gguf, options=LoadOptions(n_ctx=1024, parallel=1))
        local = _greedy(service)
        loaded = service.load(sample_gguf, options=LoadOptions(n_ctx=1024, parallel=1, rpc_servers=endpoints))
        rpc = [d for d in loaded.plan.devices if d.device.startswith("rpc:")]
        assert [d.device for d in rpc] == [f"rpc:{e}" for e in endpoints.split(",")]
        assert all(d.layers > 0 for d in rpc) and sum(d.layers for d in rpc) == 30
        assert loaded.device == "cpu+rpc" and loaded.details["tensor_split"] == [float(d.layers) for d in rpc]
        busy_before = [_cpu_seconds(p) for p in procs]
        assert _greedy(service) == local
        # the servers computed their layers (a load that silently stayed local would also answer the same)
        assert all(_cpu_seconds(p) - b > 0.05 for p, b in zip(procs, busy_before))
    finally:
        service.close()


@needs_rpc
def test_a_server_that_is_down_gets_one_clear_sentence(sample_gguf, tmp_path):
    service = ModelService(Paths(str(tmp_path)))
    port = _free_port()
    with pytest.raises(RpcError, match=f"Cannot reach the RPC server at 127.0.0.1:{port}.*rpc-server"):
        service.plan(sample_gguf, None, LoadOptions(rpc_servers=f"127.0.0.1:{port}"))
    service.close()


def test_rpc_server_lists_are_checked():
    assert parse_endpoints(" 10.0.0.2:50052, host.lan:1 ") == ["10.0.0.2:50052", "host.lan:1"]
    for bad in ("10.0.0.2", "host:0", "host:99999", "a b:1", "http://x:1"):
        with pytest.raises(RpcError):
            parse_endpoints(bad)
    with pytest.raises(RpcError, match="not host:port"):
        LoadOptions(rpc_servers="nohost").validate()


def test_the_plan_splits_by_each_servers_free_memory_and_refuses_with_numbers(sample_gguf):
    from workbench.backends.registry import default_registry
    from workbench.detect import detect

    llama = default_registry().get("llama.cpp")
    hw = Hardware(physical_cores=2, logical_cores=2, ram_total_bytes=24 * GiB, ram_available_bytes=20 * GiB,
                  disk_free_bytes=100 * GiB, rpc=(RpcDevice("a:1", 3 * GiB, 4 * GiB), RpcDevice("b:1", 1 * GiB, 4 * GiB)))
    plan = make_plan(detect(sample_gguf), llama, LoadOptions(n_ctx=2048, parallel=1, n_gpu_layers=-1), hw)
    assert [plan.device("rpc:a:1").layers, plan.device("rpc:b:1").layers] == [23, 7]  # 3:1 of 30 layers
    assert plan.tensor_split == (23, 7)
    small = Hardware(physical_cores=2, logical_cores=2, ram_total_bytes=24 * GiB, ram_available_bytes=20 * GiB,
                     disk_free_bytes=100 * GiB, rpc=(RpcDevice("a:1", 20 * MiB, 4 * GiB),))
    forced = make_plan(detect(sample_gguf), llama, LoadOptions(n_ctx=2048, parallel=1, n_gpu_layers=-1), small)
    assert not forced.fits and "rpc:a:1" in forced.problems[0] and "RPC servers" in refusal(forced)
    auto = make_plan(detect(sample_gguf), llama, LoadOptions(n_ctx=2048, parallel=1), small)
    assert auto.fits and 0 < auto.device("rpc:a:1").layers < 30


def test_the_server_refuses_a_public_address_without_the_flag():
    done = subprocess.run([sys.executable, "-m", "workbench", "rpc-server", "--host", "0.0.0.0", "--port", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no authentication" in done.stderr and "SSH tunnel" in done.stderr


def test_a_hardware_profile_names_its_rpc_servers():
    from workbench.profiles import parse_profile

    profile = parse_profile("two-hosts", 'load: {n_ctx: 2048, rpc_servers: "127.0.0.1:50052,10.0.0.2:50052"}\n')
    assert profile.load["rpc_servers"] == "127.0.0.1:50052,10.0.0.2:50052"
    with pytest.raises(Exception, match="profile 'bad': RPC server 'nohost' is not host:port"):
        parse_profile("bad", 'load: {rpc_servers: "nohost"}\n')
