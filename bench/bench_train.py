"""Training speed and memory: a workbench LoRA run against a bare peft + Trainer loop, in one run.

Both train the same LoRA (same model, data, rank, targets, batch, cutoff, learning rate,
steps, seed) on the sample model's Transformers form:
  - workbench: TrainingService starts a run (its own process, metrics.jsonl per step,
    checkpoints as configured) exactly as the Training tab does;
  - bare: a subprocess with the fewest lines that train the same thing: AutoModel,
    get_peft_model, Trainer with default logging, no workbench code at all.
Rounds alternate the two in a shuffled order; seconds per step are the median over steps
after the first two (warm-up), taken from step-end timestamps; the ratio of the
quietest runs is printed too, since one disturbed round moves a median of three. Peak RSS of each process is
its own (ru_maxrss), printed beside the workbench's memory estimate. Prints JSON and writes
bench/results/train.json.

    .venv/bin/python bench/bench_train.py [--steps 20] [--rounds 3] [--batch 4] [--cutoff 128]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXT = ("The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night he climbed the ninety steps "
        "of the tower and lit the great lamp, and the ships that passed knew his light. ") * 60


def bare_main(spec_path: str) -> None:
    """The bare loop (runs in its own process)."""
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    spec = json.load(open(spec_path))
    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model"])
    ids = tok(open(spec["text"]).read(), add_special_tokens=False)["input_ids"]
    cut, step = spec["cutoff"], spec["cutoff"] - spec["overlap"]
    chunks = [ids[i:i + cut] for i in range(0, len(ids) - spec["overlap"], step) if len(ids[i:i + cut]) == cut]
    data = [{"input_ids": c, "labels": c} for c in chunks]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.05,
                                             target_modules=spec["targets"], task_type="CAUSAL_LM"))
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    def collate(batch):
        x = torch.tensor([b["input_ids"] for b in batch])
        return {"input_ids": x, "labels": x.clone(), "attention_mask": torch.ones_like(x)}

    args = TrainingArguments(output_dir=spec["out"], per_device_train_batch_size=spec["batch"],
                             learning_rate=spec["lr"], max_steps=spec["steps"], seed=spec["seed"], report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    stamps.append(time.time())
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()]).train()
    print(json.dumps({"stamps": stamps, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def step_seconds(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps[2:] if len(gaps) > 4 else gaps)


def run_bare(spec: dict, tmp: str) -> dict:
    path = os.path.join(tmp, "bare.json")
    spec = dict(spec, out=os.path.join(tmp, "bare-out"))
    json.dump(spec, open(path, "w"))
    proc = subprocess.run([sys.executable, __file__, "--bare", path], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"step_s": step_seconds(result["stamps"]), "peak_rss": result["peak_rss"]}


def run_workbench(service, spec: dict, name: str) -> dict:
    from workbench.training.config import TrainConfig

    config = TrainConfig(name=name, base_model=spec["model"], dataset=spec["text"], cutoff_len=spec["cutoff"],
                         overlap=spec["overlap"], lora_rank=spec["rank"], lora_alpha=spec["alpha"],
                         target_modules=spec["targets"], learning_rate=spec["lr"], max_steps=spec["steps"],
                         batch_size=spec["batch"], seed=spec["seed"], validation_fraction=0.0,
                         save_every=spec["steps"], scheduler="linear")
    service.start(config, trusted_paths=True)
    status = service.wait(name, 3600)
    if status.status != "completed":
        raise RuntimeError(f"workbench run {name} {status.status}: {status.error}\n{service.log_tail(name)}")
    rows = [r for r in service.metrics(name) if "loss" in r]
    stamps = [rows[0]["time"] - rows[0]["step_s"]] + [r["time"] for r in rows]
    state = service.run_files(name).read_state()
    return {"step_s": step_seconds(stamps), "peak_rss": state["peak_rss"],
            "estimate": service.estimate(config, trusted_paths=True).total}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cutoff", type=int, default=128)
    p.add_argument("--model", help="Transformers model folder (default: the sample model's derived form)")
    p.add_argument("--bare", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        bare_main(args.bare)
        return 0
    from tests.conftest import _derive
    from workbench.paths import Paths
    from workbench.services.training_service import TrainingService

    model = args.model or _derive("transformers")
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    text = os.path.join(tmp, "text.txt")
    open(text, "w").write(TEXT)
    spec = {"model": model, "text": text, "cutoff": args.cutoff, "overlap": 0, "rank": 8, "alpha": 16,
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "lr": 2e-4, "steps": args.steps,
            "batch": args.batch, "seed": 42}
    os.makedirs(os.path.join(tmp, "models"))
    service = TrainingService(Paths(tmp))
    results = {"workbench": [], "bare": []}
    order = []
    for r in range(args.rounds):
        pair = ["workbench", "bare"]
        random.shuffle(pair)
        order += pair
    for i, who in enumerate(order):
        print(f"[bench] {who} ({i + 1}/{len(order)})", file=sys.stderr, flush=True)
        results[who].append(run_workbench(service, spec, f"bench{i}") if who == "workbench" else run_bare(spec, tmp))
        time.sleep(2)
    wb = statistics.median(r["step_s"] for r in results["workbench"])
    bare = statistics.median(r["step_s"] for r in results["bare"])
    out = {
        "config": {k: v for k, v in spec.items() if k not in ("text",)},
        "order": order,
        "runs": results,
        "workbench_step_s": wb,
        "bare_step_s": bare,
        "speed_ratio_bare_over_workbench": bare / wb,
        # the quietest run of each: robust to a round that a busy machine slowed down
        "speed_ratio_best_runs": min(r["step_s"] for r in results["bare"]) / min(r["step_s"] for r in results["workbench"]),
        "workbench_peak_rss_mib": max(r["peak_rss"] for r in results["workbench"]) / 2**20,
        "bare_peak_rss_mib": max(r["peak_rss"] for r in results["bare"]) / 2**20,
        "estimate_mib": results["workbench"][0]["estimate"] / 2**20,
    }
    out["estimate_error"] = out["estimate_mib"] / out["workbench_peak_rss_mib"] - 1
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "train.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
