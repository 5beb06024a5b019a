"""Training on several processes (data parallel): the torchrun command, and what each rank needs.

A run with `processes` > 1 (or `nnodes` > 1) is started as

    python -m workbench.training.launch RUN_FOLDER

which runs torch's own launcher (`torch.distributed.run`, i.e. torchrun) in that process with
`-m workbench.training.runner RUN_FOLDER` as the program of every rank. The Hugging Face Trainer
sees the torchrun environment and trains with DistributedDataParallel (gloo on CPU, NCCL on
CUDA): each rank reads its share of every global batch, gradients are averaged, and only
rank 0 writes metrics, checkpoints and the result. On one machine the rendezvous listens on
127.0.0.1 only; several machines rendezvous at machine 0's `rdzv` host:port, which has no
authentication (use a private network or an SSH tunnel).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys

from .config import TrainConfig

PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def torchrun_args(config: TrainConfig, folder: str, node_rank: int | None = None, port: int | None = None) -> list[str]:
    """The arguments after `python -m torch.distributed.run` that start this machine's ranks of the run."""
    node_rank = config.node_rank if node_rank is None else node_rank
    if config.nnodes > 1 or config.rdzv:
        host, _, rdzv_port = config.rdzv.rpartition(":")
        host, port = host.strip("[]"), int(rdzv_port)
    else:
        host, port = "127.0.0.1", port or free_port()
    return ["--nnodes", str(config.nnodes), "--node-rank", str(node_rank), "--nproc-per-node", str(config.processes),
            "--master-addr", host, "--master-port", str(port), "--max-restarts", "0", "-m", "workbench.training.runner", folder]


def node_command(config: TrainConfig, folder: str, node_rank: int, python: str = "python",
                 root: str | None = None) -> str:
    """The shell command that starts machine `node_rank`'s ranks (printed for the user to run there)."""
    env = f"WORKBENCH_ROOT={shlex.quote(root)} " if root else ""
    args = torchrun_args(config, folder, node_rank=node_rank)
    return env + " ".join(shlex.quote(a) for a in [python, "-m", "torch.distributed.run", *args])


def other_node_commands(config: TrainConfig, folder: str, root: str | None = None) -> list[str]:
    """One command per other machine of a several-machine run (empty for one machine)."""
    return [node_command(config, folder, rank, root=root) for rank in range(config.nnodes) if rank != config.node_rank]


def launch_env(config: TrainConfig, cores: int | None = None) -> dict:
    """Environment of the launcher: threads shared among this machine's ranks, gloo on loopback for one machine."""
    env = {}
    cores = config.threads or cores or os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = str(max(1, cores // config.processes))
    if config.nnodes == 1 and not config.rdzv and os.path.isdir("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # one machine: ranks talk over loopback only
    return env


# inside a rank ---------------------------------------------------------------
def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def die_with_parent() -> None:
    """Linux: this rank ends when its launcher does (kill -9 of the launcher must not leave ranks training)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() == 1:  # the launcher was already gone before prctl took effect
        os._exit(1)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (a no-op for one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
