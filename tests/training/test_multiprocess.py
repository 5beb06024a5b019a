"""Training on several processes (data parallel through torchrun).

Fast: the config's checks (processes, machines, rendezvous, a global batch that divides), the
per-process batch, the memory estimate that counts every process, and the exact command printed
for another machine. Slow (real LoRA runs on the sample model, 2 processes on CPU with gloo):
the loss curve matches a 1-process run with the same global batch and seed, one writer of
metrics and checkpoints, kill -9 of the launcher ends every rank and the run resumes from its
checkpoint, Cancel ends every rank; a from-scratch GPT trains on 2 processes too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time

import psutil
import pytest

from tests.training.test_runs import wait_for_step
from workbench.paths import Paths
from workbench.services.training_service import TrainingService
from workbench.training.config import TrainConfig, TrainConfigError
from workbench.training.distributed import launch_env, node_command, other_node_commands, torchrun_args
from workbench.training.estimate import estimate

BASE = dict(name="r", base_model="m", dataset="d.txt")


# fast -----------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"processes": 0}, "Processes must be between 1 and 256"),
    ({"nnodes": 0}, "machines between 1 and 1024"),
    ({"processes": 3, "batch_size": 4}, r"global batch \(batch size 4 x accumulation 1\) must divide evenly among "
                                        r"the 3 processes"),
    ({"processes": 2, "nnodes": 2, "batch_size": 2, "rdzv": "h:1"}, "among the 4 processes"),
    ({"nnodes": 2}, "needs the rendezvous address of machine 0"),
    ({"nnodes": 2, "rdzv": "10.0.0.5"}, "needs the rendezvous address"),
    ({"rdzv": "10.0.0.5:99999"}, "must be host:port"),
    ({"rdzv": "a b:80"}, "must be host:port"),
    ({"nnodes": 2, "node_rank": 2, "rdzv": "h:29500"}, r"node rank\) 2 must be between 0 and 1"),
])
def test_bad_process_settings_are_refused(changes, message):
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig(**BASE, **changes).validate()


@pytest.mark.parametrize("batch, accum, processes, nnodes, expected", [
    (4, 1, 1, 1, (4, 1)),
    (4, 1, 2, 1, (2, 1)),        # each process takes half of every batch
    (1, 4, 2, 1, (1, 2)),        # a batch of 1 cannot split: each process accumulates half the steps
    (3, 2, 2, 1, (3, 1)),        # 6 examples a step: 3 each, in one micro-batch (never above batch_size)
    (8, 2, 2, 2, (4, 1)),        # 16 over 4 processes on 2 machines
])
def test_the_global_batch_is_kept(batch, accum, processes, nnodes, expected):
    config = TrainConfig(**BASE, batch_size=batch, grad_accum=accum, processes=processes, nnodes=nnodes,
                         rdzv="h:29500" if nnodes > 1 else "").validate()
    micro, steps = config.per_process_batch()
    assert (micro, steps) == expected
    assert micro * steps * config.world_size == batch * accum


def test_processes_round_trip_through_yaml():
    config = TrainConfig(**BASE, processes=2, nnodes=2, node_rank=1, rdzv="[fd00::5]:29500", batch_size=4)
    assert TrainConfig.from_yaml(config.to_yaml(), "x") == config.validate()


def test_one_machine_listens_on_loopback_with_a_free_port():
    args = torchrun_args(TrainConfig(**BASE, processes=2), "/runs/r")
    assert args[args.index("--master-addr") + 1] == "127.0.0.1"
    assert int(args[args.index("--master-port") + 1]) > 0
    assert args[args.index("--nproc-per-node") + 1] == "2" and args[-3:] == ["-m", "workbench.training.runner",
                                                                              "/runs/r"]
    env = launch_env(TrainConfig(**BASE, processes=2), cores=8)
    assert env["OMP_NUM_THREADS"] == "4"  # the cores are shared, not oversubscribed
    assert launch_env(TrainConfig(**BASE, processes=2, threads=2), cores=8)["OMP_NUM_THREADS"] == "1"


def test_the_command_for_the_other_machine(tmp_path):
    config = TrainConfig(**BASE, processes=2, nnodes=2, rdzv="10.0.0.5:29500", batch_size=8).validate()
    folder = str(tmp_path / "user_data" / "runs" / "my run")
    commands = other_node_commands(config, folder, root="/srv/wb")
    assert commands == [
        f"WORKBENCH_ROOT=/srv/wb python -m torch.distributed.run --nnodes 2 --node-rank 1 --nproc-per-node 2 "
        f"--master-addr 10.0.0.5 --master-port 29500 --max-restarts 0 "
        f"-m workbench.training.runner {shlex.quote(folder)}"]
    assert "--node-rank 0" in node_command(config, folder, 0)
    assert other_node_commands(TrainConfig(**BASE, processes=2), folder) == []  # one machine: nothing to print


def test_the_service_prints_the_commands_of_a_saved_run(tmp_path):
    service = TrainingService(Paths(str(tmp_path)))
    run = service.run_files("multi")
    os.makedirs(run.folder)
    config = TrainConfig(**{**BASE, "name": "multi"}, processes=1, nnodes=3, rdzv="gpu0.lan:29400", batch_size=3)
    with open(run.config, "w", encoding="utf-8") as f:
        f.write(config.to_yaml())
    commands = service.node_commands("multi")
    assert [c.split("--node-rank ")[1].split()[0] for c in commands] == ["1", "2"]
    assert all("--master-addr gpu0.lan --master-port 29400" in c for c in commands)
    with pytest.raises(Exception, match="Start a run on machine 0"):
        service.start(TrainConfig(**{**BASE, "name": "n1"}, nnodes=2, node_rank=1, rdzv="h:1"))


def test_the_memory_estimate_counts_every_process():
    one = estimate(TrainConfig(**BASE, batch_size=4), 135_000_000, 576, 30, 49152)
    two = estimate(TrainConfig(**BASE, batch_size=4, processes=2), 135_000_000, 576, 30, 49152)
    assert two.processes == 2 and two.total == 2 * two.per_process + two.launcher and two.launcher > 0
    assert two.weights == one.weights and two.optimizer == one.optimizer  # each process holds the whole model
    assert two.runtime > one.runtime  # and torch.distributed's share
    assert two.activations * 2 == one.activations  # but only its half of the batch
    assert "2 processes of" in two.summary() and two.to_dict()["total"] == two.total


# slow: real runs ------------------------------------------------------------------------
STORY = (
    "The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night Oswin Tull climbed the ninety "
    "steps of the tower and lit the great lamp. The ships that passed Ardmore Point knew the light of Oswin "
    "Tull. When storms came, Oswin Tull stayed awake until dawn, watching the sea.\n"
)


@pytest.fixture(scope="module")
def service(tmp_path_factory, sample_transformers):
    root = tmp_path_factory.mktemp("mp-root")
    (root / "models").mkdir()
    (root / "models" / "smol").symlink_to(sample_transformers)
    (root / "datasets").mkdir()
    (root / "datasets" / "story.txt").write_text(STORY * 8, encoding="utf-8")  # 22 chunks: 18 train, 4 validation
    return TrainingService(Paths(str(root)))


def lora(name: str, **changes) -> TrainConfig:
    # lora_dropout 0: dropout masks are drawn per process, so with dropout the two runs would differ by design
    base = dict(name=name, base_model="smol", dataset="story.txt", cutoff_len=32, overlap=8, max_steps=12,
                batch_size=2, learning_rate=2e-3, save_every=4, validation_fraction=0.2, lora_dropout=0.0,
                scheduler="constant")
    return TrainConfig(**{**base, **changes})


def rows(service, name, key="loss") -> list[dict]:
    return [r for r in service.metrics(name) if key in r]


def rank_processes(folder: str) -> list[psutil.Process]:
    """Processes still running this run (the launcher or a rank), found by the run folder in their command."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if folder in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def wait_gone(folder: str, timeout: float = 30) -> list:
    deadline = time.time() + timeout
    while rank_processes(folder) and time.time() < deadline:
        time.sleep(0.3)
    return rank_processes(folder)


def test_two_processes_follow_the_loss_curve_of_one(service):
    # 18 training examples, a global batch of 2: 9 steps an epoch in both runs, so the 12 steps cross an
    # epoch boundary with the same examples in every step (each process takes one of the two).
    for name, processes in (("one", 1), ("two", 2)):
        service.start(lora(name, processes=processes))
        status = service.wait(name, 600)
        assert status.status == "completed", f"{status.error}\n{service.log_tail(name, 60)}"
    one, two = rows(service, "one"), rows(service, "two")
    assert [r["step"] for r in two] == list(range(1, 13))  # one writer: each step logged once
    # Same examples, same initial adapter, gradients averaged over the processes: what differs is the order
    # of float additions (per-process sums, then gloo's all-reduce), about 1e-6 here. 1e-3 relative leaves
    # room for that and still fails a run whose processes train apart (0.6% off by step 2 when they did).
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2), (a["step"], a["grad_norm"], b["grad_norm"])
    assert service.status("two").perplexity_after == pytest.approx(service.status("one").perplexity_after, rel=1e-3)
    run = service.run_files("two")
    checkpoints = sorted(os.listdir(run.checkpoints))
    assert checkpoints == ["checkpoint-12", "checkpoint-8"]  # the last two kept, as with one process
    files = os.listdir(os.path.join(run.checkpoints, "checkpoint-12"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "trainer_state.json"} <= set(files)
    assert os.path.isfile(os.path.join(run.adapter, "adapter_model.safetensors"))
    log = service.log_tail("two", 400)
    assert "rank 0 of 2: per-process batch 1 x accumulation 1" in log and "rank 1 of 2" in log
    assert log.count("step 12/12 loss=") == 1  # only rank 0 reports steps
    assert json.load(open(run.path("state.json")))["processes"] == 2


def test_kill_9_of_the_launcher_ends_every_rank_and_resume_continues(service):
    service.start(lora("killed", processes=2, max_steps=14, save_every=3))
    run = service.run_files("killed")
    wait_for_step(service, "killed", 5)  # a checkpoint at step 3 exists
    launcher = run.read_state()["pid"]
    assert "workbench.training.launch" in " ".join(psutil.Process(launcher).cmdline())
    os.kill(launcher, signal.SIGKILL)
    assert wait_gone(run.folder) == []  # the ranks die with their launcher
    status = service.status("killed")
    assert status.status == "interrupted" and status.resumable
    checkpoint = run.last_checkpoint()
    assert checkpoint is not None
    logged_before_kill = len(rows(service, "killed"))
    service.resume("killed")
    status = service.wait("killed", 600)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('killed', 60)}"
    steps = [r["step"] for r in rows(service, "killed")]
    assert steps[logged_before_kill] == int(checkpoint.rsplit("-", 1)[1]) + 1
    assert steps[-1] == 14
    assert "resuming from checkpoint-" in service.log_tail("killed", 300)


def test_cancel_ends_every_rank_with_a_checkpoint(service):
    service.start(lora("cancelled", processes=2, max_steps=400, save_every=1000))
    run = service.run_files("cancelled")
    wait_for_step(service, "cancelled", 3)
    listening = [c.laddr.ip for proc in rank_processes(run.folder) for c in proc.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and set(listening) == {"127.0.0.1"}  # rendezvous store and gloo: loopback only
    service.cancel("cancelled")
    status = service.wait("cancelled", 180)
    assert status.status == "cancelled", f"{status.status}: {status.error}\n{service.log_tail('cancelled', 60)}"
    assert wait_gone(run.folder) == []
    checkpoint = run.last_checkpoint()
    assert checkpoint is not None  # saved where the ranks stopped, together, though save_every is 1000
    stopped = int(checkpoint.rsplit("-", 1)[1])
    assert [r["step"] for r in rows(service, "cancelled")][-1] == stopped
    assert not os.path.exists(run.cancel_flag)


def test_the_training_tab_passes_processes():
    from workbench.ui.training_tab import FORM_FIELDS, config_from_values

    values = dict(zip(FORM_FIELDS, [None] * len(FORM_FIELDS)))
    values.update(TrainConfig(**BASE).to_dict(), processes=2.0, target_modules="q_proj")
    config = config_from_values([values[k] for k in FORM_FIELDS])
    assert FORM_FIELDS[-1] == "processes" and config.processes == 2  # last: older API callers may leave it out
    with pytest.raises(Exception, match="Processes must be a whole number"):
        config_from_values([{**values, "processes": 1.5}[k] for k in FORM_FIELDS])


def test_a_scratch_gpt_trains_on_two_processes(service):
    config = TrainConfig(name="scratch2", method="scratch", dataset="story.txt", cutoff_len=64, overlap=16, n_layer=2,
                         n_head=2, n_embd=64, max_steps=20, batch_size=4, learning_rate=3e-3, save_every=10,
                         validation_fraction=0.2, processes=2, output_model="tiny-gpt-2p")
    service.start(config)
    status = service.wait("scratch2", 600)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('scratch2', 60)}"
    curve = [r["loss"] for r in rows(service, "scratch2")]
    assert len(curve) == 20 and sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 1.0
    assert status.perplexity_after < status.perplexity_before
    assert os.path.isfile(os.path.join(status.output, "config.json"))
    assert "rank 0 of 2: per-process batch 2 x accumulation 1" in service.log_tail("scratch2", 200)


def test_a_failing_run_on_two_processes_says_why(service):
    service.start(lora("bad2", processes=2, target_modules=["nonexistent_proj"]))
    status = service.wait("bad2", 300)
    assert status.status == "failed" and "no module named nonexistent_proj" in status.error
    assert wait_gone(service.run_files("bad2").folder) == []
