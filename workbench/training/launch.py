"""The launcher of a run on several processes: `python -m workbench.training.launch RUN_FOLDER`.

Runs torch's launcher (torchrun) in this process with `workbench.training.runner` as every
rank's program (see distributed.py). This process is the run's `pid` in state.json: while it
lives the run is running; kill -9 of it ends the ranks too (they die with their parent), so
the run shows as interrupted and resumes from its last complete checkpoint. When a rank fails
before rank 0 could say why, the run is marked failed here with the end of its log.
"""

from __future__ import annotations

import os
import sys
import time

from .config import TrainConfig
from .distributed import launch_env, torchrun_args
from .run_files import FAILED, RUNNING, RunFiles


def listen_on_loopback() -> int:
    """Bind the rendezvous store of a one-machine run to 127.0.0.1 and return its port.

    torchrun's store listens on every interface whatever address it is given; a socket bound here
    and handed to it (master_listen_fd) keeps it on loopback, and takes a free port without a race."""
    import socket

    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(False)
    real = static_tcp_rendezvous.TCPStore

    def store(host, port, world_size=None, is_master=False, *args, **kwargs):
        if is_master and port == sock.getsockname()[1]:
            kwargs["master_listen_fd"] = sock.fileno()
        return real(host, port, world_size, is_master, *args, **kwargs)

    static_tcp_rendezvous.TCPStore = store
    return sock.getsockname()[1]


def main(folder: str) -> int:
    files = RunFiles(folder)
    with open(files.config, encoding="utf-8") as f:
        config = TrainConfig.from_yaml(f.read(), files.config)
    os.environ.update(launch_env(config))
    from torch.distributed.run import get_args_parser, run

    port = None
    if config.nnodes == 1 and not config.rdzv:
        port = listen_on_loopback()
    argv = torchrun_args(config, folder, port=port)
    args = get_args_parser().parse_args(argv)
    print(f"launching {config.processes} training processes on this machine "
          f"({config.world_size} in all): torchrun {' '.join(argv[:-3])}", flush=True)
    try:
        run(args)
        return 0
    except BaseException as e:  # noqa: BLE001 - a rank failed or the launcher was stopped
        if config.node_rank == 0 and files.read_state().get("status") == RUNNING:
            files.update_state(status=FAILED, finished=time.time(),
                               error=f"A training process failed ({type(e).__name__}); see the log for its error.")
        print(f"launcher: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m workbench.training.launch RUN_FOLDER", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
