"""The memory plan as a person reads it: the table and a refusal name the same numbers (the model part
a cap limits, and the worker's total with its runtime), the table is narrow, the chart draws the cap."""

from __future__ import annotations

from workbench.backends.registry import default_registry
from workbench.detect import Detection
from workbench.hardware import Hardware
from workbench.options import LoadOptions
from workbench.plan import GiB, MiB, make_plan, plan_table, refusal
from workbench.ui.model_tab import plan_frame

MODEL = Detection(path="/models/m", format="transformers", evidence="test", n_layers=8, context_length=4096,
                  embedding_size=512, n_heads=8, n_kv_heads=8, head_dim=64, vocab_size=32000,
                  parameter_count=60_000_000, size_bytes=120_000_000)
BOX = Hardware(physical_cores=4, logical_cores=8, ram_total_bytes=64 * GiB, ram_available_bytes=60 * GiB,
               disk_free_bytes=100 * GiB)


def _plan(**options):
    return make_plan(MODEL, default_registry().get("transformers"), LoadOptions(parallel=1, **options), BOX)


def test_the_table_and_the_refusal_name_the_same_numbers():
    plan = _plan(n_ctx=2048, max_ram_gib=0.05)
    cpu = plan.device("cpu")
    table, said = plan_table(plan), refusal(plan)
    model_line = next(line for line in table.splitlines() if line.startswith("model"))
    total_line = next(line for line in table.splitlines() if line.startswith("total"))
    assert f"{cpu.model_bytes / MiB:.0f} MiB" in model_line and f"{cpu.total / MiB:.0f} MiB" in total_line
    assert f"needs {cpu.model_bytes / GiB:.2f} GiB RAM for the model" in said
    assert f"total is {cpu.total / GiB:.2f} GiB with its runtime" in said


def test_the_table_is_narrow():
    assert max(len(line) for line in plan_table(_plan(n_ctx=2048)).splitlines() if not line.startswith(("DOES", "Auto"))) <= 60


def test_the_chart_draws_the_cap_when_set_or_exceeded_and_no_free_bar():
    fits = plan_frame(_plan(n_ctx=2048))
    assert fits[fits["part"] == "cap"]["MiB"].sum() == 0  # no cap set and it fits: only the parts
    capped = plan_frame(_plan(n_ctx=2048, max_ram_gib=0.05))
    cap = capped[capped["part"] == "cap"]
    assert list(cap["device"]) == ["cpu cap"] and abs(cap["MiB"].iloc[0] - 0.05 * 1024) < 1
    parts = capped[(capped["device"] == "cpu") & (capped["part"] != "runtime")]["MiB"].sum()
    assert parts > cap["MiB"].iloc[0]  # the bars show that it does not fit
