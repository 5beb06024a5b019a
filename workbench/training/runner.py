"""The training process: `python -m workbench.training.runner RUN_FOLDER`.

Started by TrainingService (or the CLI) in its own process so the app never holds a model
being trained and a crash here cannot take the app down. It reads the run's config.yaml,
prepares data and model, measures validation perplexity, then trains with the Hugging
Face Trainer (the de-facto loop: gradient accumulation, schedulers, checkpoints with
optimizer state), writing one metrics.jsonl row per step. It resumes from the newest
checkpoint when there is one. A CANCEL file or SIGTERM makes it save a checkpoint and
stop; the outcome (completed, cancelled, failed with the reason) goes to state.json.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import sys
import time
import traceback

from ..atomic import write_json_atomic
from ..errors import WorkbenchError, brief
from ..hardware import peak_rss_bytes
from .config import LORA, TrainConfig
from .run_files import CANCELLED, COMPLETED, FAILED, RUNNING, RunFiles




class ListDataset:
    """A list of {'input_ids', 'labels'} examples in the torch Dataset shape."""

    def __init__(self, examples):
        self.input_ids, self.labels = examples.input_ids, examples.labels

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


class ReadOnlyRunFiles(RunFiles):
    """The run folder as ranks other than 0 see it: they read config and checkpoints, and write nothing."""

    def update_state(self, **changes) -> dict:
        return self.read_state()

    def append_metrics(self, row: dict) -> None:
        pass


def make_collator(pad_id: int):
    """Pads a batch to its longest example; padded positions get no loss and no attention."""
    import torch

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def prepare_data(config: TrainConfig, tokenizer, template):
    """(train examples, validation examples or None, preview dict) for the run's dataset."""
    from .dataset import load_dataset, preview, split_examples, tokenize_dataset

    raw = load_dataset(config.dataset)
    examples = tokenize_dataset(raw, tokenizer, config.cutoff_len, config.overlap, template)
    info = preview(raw, examples, tokenizer, template)
    if config.validation_file:
        val_raw = load_dataset(config.validation_file)
        val = tokenize_dataset(val_raw, tokenizer, config.cutoff_len, config.overlap, template)
        train = examples
    else:
        train, val = split_examples(examples, config.validation_fraction, config.seed)
    return train, val, info


def training_arguments(config: TrainConfig, output_dir: str, has_eval: bool, world: int = 1):
    """The Trainer's arguments; with `world` > 1 processes each takes its share of the same global batch."""
    import torch
    from transformers import TrainingArguments

    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if config.eval_every else "epoch"
    batch, accum = config.per_process_batch() if world > 1 else (config.batch_size, config.grad_accum)
    extra = {}
    if world > 1:
        extra = dict(ddp_backend="nccl" if torch.cuda.is_available() else "gloo", ddp_find_unused_parameters=False)
    return TrainingArguments(
        **extra,
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs if config.max_steps <= 0 else 1,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        logging_steps=1,
        eval_strategy=eval_strategy,
        eval_steps=config.eval_every or None,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=2,
        seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def make_callback(run: RunFiles, config: TrainConfig, stop_requested):
    """The Trainer callback that writes metrics.jsonl, honours Cancel and does early stopping.

    On several processes only rank 0 writes; a Cancel seen by any rank stops every rank at the same step."""
    from transformers import TrainerCallback

    from .distributed import any_rank

    class WorkbenchCallback(TrainerCallback):
        def __init__(self):
            self.best = math.inf
            self.bad_evals = 0
            self.cancelled = False
            self.early_stopped = False
            self.last_time = time.time()
            self.last_eval_step = -1

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            logs = logs or {}
            row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0, 4),
                   "time": time.time(), "rss": peak_rss_bytes()}
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = float(logs[key])
            if "loss" in row:
                now = time.time()
                row["step_s"] = now - self.last_time
                self.last_time = now
            if "eval_loss" in row:
                row["eval_perplexity"] = math.exp(min(row["eval_loss"], 50))
            if len(row) <= 5 or ("eval_loss" in row and state.global_step == self.last_eval_step):
                return  # nothing to record, or the final evaluation repeating the last one
            if "eval_loss" in row:
                self.last_eval_step = state.global_step
            run.append_metrics(row)
            print(f"step {state.global_step}/{state.max_steps} " + " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if k in ("loss", "eval_loss", "learning_rate")), flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or not config.early_stopping_patience:
                return
            if loss < self.best - 1e-4:
                self.best, self.bad_evals = loss, 0
            else:
                self.bad_evals += 1
                if self.bad_evals >= config.early_stopping_patience:
                    print(f"early stopping: validation loss has not improved for {self.bad_evals} evaluations", flush=True)
                    self.early_stopped = True
                    control.should_training_stop = True

        def on_step_end(self, args, state, control, **kwargs):
            if any_rank(stop_requested()) and not self.cancelled:
                self.cancelled = True
                control.should_save = True
                control.should_training_stop = True

    return WorkbenchCallback()


def evaluate_perplexity(trainer, dataset) -> float | None:
    if dataset is None:
        return None
    loss = trainer.evaluate(dataset)["eval_loss"]
    return math.exp(min(loss, 50))


def save_result(config: TrainConfig, run: RunFiles, model, tokenizer, template) -> str:
    """Write the adapter (LoRA) or the new model folder (scratch); return where it went."""
    import shutil
    import tempfile

    if config.method == LORA:
        tmp = tempfile.mkdtemp(prefix=".adapter-", dir=run.folder)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if os.path.isdir(run.adapter):
            shutil.rmtree(run.adapter)
        os.replace(tmp, run.adapter)
        return run.adapter
    out = run.read_state().get("output_path")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".training-", dir=parent)
    model.save_pretrained(tmp)
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(tmp)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def failure_message(e: BaseException) -> str:
    """The one sentence a failed run shows."""
    if isinstance(e, WorkbenchError):
        return str(e)
    if isinstance(e, MemoryError):
        return "Training ran out of memory; lower the batch size or the cutoff length."
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return ("The disk is full, so the run stopped; free some space and press Resume: it goes on from its "
                "last complete checkpoint.")
    return f"Training failed ({type(e).__name__}: {brief(e)})."


def run(folder: str) -> int:
    from .distributed import any_rank, die_with_parent, local_world_size, rank, world_size

    world, main = world_size(), rank() == 0
    if world > 1:
        die_with_parent()
    run_files = RunFiles(folder) if main else ReadOnlyRunFiles(folder)
    stop = {"requested": False}

    def on_term(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)

    def stop_requested() -> bool:
        return stop["requested"] or os.path.exists(run_files.cancel_flag)

    if world > 1:  # state.json keeps the launcher's pid: the run lives as long as it does
        run_files.update_state(status=RUNNING, started=time.time(), error=None, processes=world)
    else:
        run_files.update_state(status=RUNNING, pid=os.getpid(), started=time.time(), error=None)
    try:
        with open(run_files.config, encoding="utf-8") as f:
            config = TrainConfig.from_yaml(f.read(), run_files.config)
        if config.threads or world > 1:
            import torch

            from ..hardware import detect_hardware

            cores = config.threads or detect_hardware().physical_cores
            torch.set_num_threads(max(1, cores // local_world_size()) if world > 1 else cores)
        from ..engine_logging import quiet_engines
        from .model_setup import build_model, chat_template_of, load_tokenizer, trainable_parameters

        quiet_engines()
        from transformers import Trainer, set_seed

        set_seed(config.seed)
        print(f"loading tokenizer and data for {config.method} run {config.name}", flush=True)
        tokenizer = load_tokenizer(config)
        template = chat_template_of(tokenizer)
        train, val, info = prepare_data(config, tokenizer, template)
        if main:
            write_json_atomic(run_files.path("dataset.json"), {**info, "train_examples": len(train.input_ids),
                                                                 "validation_examples": len(val.input_ids) if val else 0})
        print(f"dataset: {info['format']}, {len(train.input_ids)} training and {len(val.input_ids) if val else 0} "
              f"validation examples, {info['tokens']} tokens, {info['problem_count']} rows skipped", flush=True)
        model = build_model(config, tokenizer)
        trainable, total = trainable_parameters(model)
        print(f"model: {total:,} parameters, {trainable:,} trained", flush=True)
        train_set, val_set = ListDataset(train), (ListDataset(val) if val else None)
        callback = make_callback(run_files, config, stop_requested)
        trainer = Trainer(
            model=model,
            args=training_arguments(config, run_files.checkpoints, val_set is not None, world),
            train_dataset=train_set,
            eval_dataset=val_set,
            data_collator=make_collator(tokenizer.pad_token_id),
            callbacks=[callback],
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our callback prints one line per step
        resume_from = run_files.last_checkpoint()
        state = run_files.read_state()
        measure = resume_from is None and val_set is not None and "perplexity_before" not in state
        if any_rank(measure):  # evaluation is collective: every rank measures or none
            ppl = evaluate_perplexity(trainer, val_set)
            # accelerate marks a model prepared for evaluation as prepared for good, and train() would then
            # skip wrapping it in DistributedDataParallel: each rank would train alone, gradients never averaged
            trainer.model._is_accelerate_prepared = False
            run_files.update_state(perplexity_before=ppl)
            print(f"validation perplexity before training: {ppl:.3f}", flush=True)
        if resume_from:
            print(f"resuming from {os.path.basename(resume_from)}", flush=True)
        run_files.update_state(trainable_parameters=trainable, total_parameters=total)
        if world > 1:
            print(f"rank {rank()} of {world}: per-process batch {trainer.args.per_device_train_batch_size} x "
                  f"accumulation {trainer.args.gradient_accumulation_steps}", flush=True)
        trainer.train(resume_from_checkpoint=resume_from)
        if callback.cancelled:
            run_files.update_state(status=CANCELLED, finished=time.time(), peak_rss=peak_rss_bytes())
            print("cancelled; the last checkpoint is kept, resume to go on", flush=True)
            return 0
        ppl_after = evaluate_perplexity(trainer, val_set)
        if not main:
            return 0
        output = save_result(config, run_files, trainer.model, tokenizer, template)
        run_files.update_state(status=COMPLETED, finished=time.time(), output=output, perplexity_after=ppl_after,
                               early_stopped=callback.early_stopped, peak_rss=peak_rss_bytes())
        if ppl_after is not None:
            print(f"validation perplexity after training: {ppl_after:.3f}", flush=True)
        print(f"done: {output}", flush=True)
        return 0
    except BaseException as e:  # the run's outcome must say failed, whatever happened
        traceback.print_exc()
        run_files.update_state(status=FAILED, finished=time.time(), error=failure_message(e))
        return 1
    finally:
        try:
            if main:
                os.unlink(run_files.cancel_flag)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m workbench.training.runner RUN_FOLDER", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1]))
