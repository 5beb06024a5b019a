"""Training on 1 vs N processes (data parallel, torchrun + gloo on CPU) for the same global batch.

Each round starts a workbench LoRA run (or a from-scratch GPT with --method scratch) through
TrainingService, as the Training tab does, once with processes=1 and once with processes=N,
in a shuffled order. Seconds per step are the median over the steps after the first two
(warm-up), from the step-end timestamps rank 0 writes to metrics.jsonl; model loading and
the launcher's start are not counted (`wall_s` is the whole run, start to finish). The
loss curves of the two are compared step by step (they should agree: same examples per
step, same seed). On a machine whose cores one process already keeps busy, N processes
cannot be faster: they split the same cores and add an all-reduce per step; the gain
comes with more cores or GPUs than one process uses. Prints JSON and writes
bench/results/train_processes.json.

    .venv/bin/python bench/bench_train_processes.py [--processes 2] [--steps 12] [--rounds 2] [--batch 4]
        [--cutoff 64] [--method lora|scratch]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXT = ("The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night he climbed the ninety steps "
        "of the tower and lit the great lamp, and the ships that passed knew his light. ") * 60


def run_once(service, spec: dict, name: str, processes: int) -> dict:
    from workbench.training.config import TrainConfig

    extra = (dict(base_model=spec["model"], lora_dropout=0.0) if spec["method"] == "lora" else
             dict(method="scratch", n_layer=4, n_head=4, n_embd=128, output_model=name))
    config = TrainConfig(name=name, dataset=spec["text"], cutoff_len=spec["cutoff"], overlap=0,
                         learning_rate=spec["lr"], max_steps=spec["steps"], batch_size=spec["batch"], seed=42,
                         validation_fraction=0.0, save_every=spec["steps"], scheduler="constant",
                         processes=processes, **extra)
    started = time.time()
    service.start(config, trusted_paths=True)
    status = service.wait(name, 3600)
    wall = time.time() - started
    if status.status != "completed":
        raise RuntimeError(f"run {name} {status.status}: {status.error}\n{service.log_tail(name, 40)}")
    rows = [r for r in service.metrics(name) if "loss" in r]
    stamps = [r["time"] for r in rows]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # after the first two steps
    return {"processes": processes, "step_s": statistics.median(gaps), "wall_s": wall,
            "losses": [r["loss"] for r in rows], "epochs": [r.get("epoch", 0) for r in rows], "peak_rss_rank0": service.run_files(name).read_state().get("peak_rss"),
            "estimate_total": service.estimate(config, trusted_paths=True).total}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="global batch (the same for both)")
    p.add_argument("--cutoff", type=int, default=64)
    p.add_argument("--method", choices=("lora", "scratch"), default="lora")
    p.add_argument("--model", help="Transformers model folder (default: the sample model's derived form)")
    args = p.parse_args()
    load_before = os.getloadavg()
    from workbench.hardware import detect_hardware
    from workbench.paths import Paths
    from workbench.services.training_service import TrainingService

    model = ""
    if args.method == "lora":
        from tests.conftest import _derive

        model = args.model or _derive("transformers")
    tmp = tempfile.mkdtemp(prefix="bench-train-processes-")
    for sub in ("models", "user_data", "datasets"):
        os.makedirs(os.path.join(tmp, sub))
    text = os.path.join(tmp, "text.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write(TEXT)
    spec = {"model": model, "text": text, "cutoff": args.cutoff, "lr": 2e-4 if args.method == "lora" else 1e-3,
            "steps": args.steps, "batch": args.batch, "method": args.method}
    service = TrainingService(Paths(tmp))
    order = [n for _ in range(args.rounds) for n in random.sample([1, args.processes], 2)]
    runs = [run_once(service, spec, f"bench{i}-p{n}", n) for i, n in enumerate(order)]
    one = [r for r in runs if r["processes"] == 1]
    many = [r for r in runs if r["processes"] == args.processes]
    step_one = statistics.median(r["step_s"] for r in one)
    step_many = statistics.median(r["step_s"] for r in many)
    hw = detect_hardware()
    result = {
        "method": args.method, "global_batch": args.batch, "cutoff": args.cutoff, "steps": args.steps,
        "rounds": args.rounds, "physical_cores": hw.physical_cores, "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "step_s_1_process": step_one, f"step_s_{args.processes}_processes": step_many,
        "speedup": step_one / step_many,
        "wall_s_1_process": statistics.median(r["wall_s"] for r in one),
        f"wall_s_{args.processes}_processes": statistics.median(r["wall_s"] for r in many),
        "max_loss_difference": max(abs(a - b) for a, b in zip(one[0]["losses"], many[0]["losses"])),
        # within the first epoch the steps see the same examples; at an epoch's end a global batch that does
        # not divide the examples is filled differently (the distributed sampler wraps around)
        "max_loss_difference_first_epoch": max(abs(a - b) for a, b, e in zip(one[0]["losses"], many[0]["losses"],
                                                                            one[0]["epochs"]) if e < 1.0),
        "peak_rss_rank0_mib": {str(r["processes"]): r["peak_rss_rank0"] / 2**20 for r in runs if r["peak_rss_rank0"]},
        "estimate_total_mib": {str(r["processes"]): r["estimate_total"] / 2**20 for r in runs},
        "runs": [{k: v for k, v in r.items() if k not in ("losses", "epochs")} for r in runs],
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "train_processes.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
