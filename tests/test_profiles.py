"""Hardware profiles: shipped set, save/load/delete, strict YAML, warnings, remembered settings."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import ROOT, run_cli
from workbench.hardware import Hardware
from workbench.errors import WorkbenchError
from workbench.options import LoadOptions
from workbench.profiles import THIS_MACHINE, ProfileError, ProfileStore

SMALL_BOX = Hardware(physical_cores=2, logical_cores=2, ram_total_bytes=8 * 2**30, ram_available_bytes=6 * 2**30,
                     disk_free_bytes=10 * 2**30)


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "hardware"
    shutil.copytree(os.path.join(ROOT, "presets", "hardware"), folder,
                    ignore=shutil.ignore_patterns(f"{THIS_MACHINE}.yaml", ".deleted"))
    return ProfileStore(str(folder), str(tmp_path / "model_settings.json"))


def test_shipped_profiles_all_parse(store):
    names = store.names()
    for expected in ("cpu-8gb", "cpu-16gb", "gpu-6gb", "gpu-8gb", "gpu-12gb", "gpu-24gb"):
        assert expected in names
    for name in names:
        assert store.get(name).builtin


def test_save_load_delete_round_trip(store):
    opts = LoadOptions(n_ctx=3072, n_batch=256, max_ram_gib=5.5, cache_type="q8_0", flash_attn=True)
    store.save("my-laptop", opts, "mine", assumes_ram_gib=8)
    back = store.get("my-laptop").options()
    assert (back.n_ctx, back.n_batch, back.max_ram_gib, back.cache_type, back.flash_attn) == (3072, 256, 5.5, "q8_0", True)
    store.delete("my-laptop")
    assert "my-laptop" not in store.names()
    assert store.undo_delete() == "my-laptop" and store.get("my-laptop").options().n_ctx == 3072
    with pytest.raises(WorkbenchError, match="nothing to undo"):
        store.undo_delete()


def test_shipped_profiles_are_protected(store):
    with pytest.raises(ProfileError, match="shipped"):
        store.save("gpu-8gb", LoadOptions())
    with pytest.raises(ProfileError, match="shipped"):
        store.delete("cpu-8gb")


@pytest.mark.parametrize("text, message", [
    ("load:\n  n_ctx: 2048\n  turbo: true\n", "line 3: 'load.turbo' is not a valid key"),
    ("description: x\ncolour: red\n", "line 2: 'colour' is not a valid key"),
    ("load:\n  n_ctx: lots\n", "line 2: 'load.n_ctx' has the wrong type"),
    ("load:\n  cache_type: q2\n", "KV cache type 'q2' is unknown"),
    ("load: [1, 2\n", "not valid YAML at line"),
    ("assumes:\n  ram_gib: -4\n", "line 2: 'assumes.ram_gib' must be a positive"),
])
def test_bad_yaml_names_key_and_line(store, text, message):
    with open(os.path.join(store.folder, "broken.yaml"), "w") as f:
        f.write(text)
    with pytest.raises(ProfileError) as e:
        store.get("broken")
    assert message in str(e.value)
    rows = {r["name"]: r for r in store.list()}
    assert "error" in rows["broken"] and "error" not in rows["cpu-8gb"]  # the others still load


def test_warns_when_profile_assumes_more_than_the_machine_has(store):
    assert "assumes 32 GiB RAM" in store.get("gpu-24gb").warning(SMALL_BOX)
    assert "24 GiB VRAM" in store.get("gpu-24gb").warning(SMALL_BOX)
    assert store.get("cpu-8gb").warning(SMALL_BOX) is None


def test_this_machine_profile_is_written_once(store):
    store.ensure_this_machine(SMALL_BOX)
    p = store.get(THIS_MACHINE)
    assert p.load["n_threads"] == 2 and p.load["max_ram_gib"] == 6.4 and not p.builtin
    store.ensure_this_machine(Hardware(4, 8, 64 * 2**30, 60 * 2**30, 1))
    assert store.get(THIS_MACHINE).load["n_threads"] == 2


def test_names_cannot_escape_the_folder(store):
    for bad in ("../evil", "/etc/passwd", "a/b", ""):
        with pytest.raises(WorkbenchError):
            store.save(bad, LoadOptions())


def test_last_settings_per_model_survive_a_corrupt_file(store):
    store.remember("a.gguf", "llama.cpp", LoadOptions(n_ctx=1024))
    loader, opts = store.last_settings("a.gguf")
    assert loader == "llama.cpp" and opts.n_ctx == 1024
    with open(store.settings_path, "w") as f:
        f.write("{broken")
    assert store.last_settings("a.gguf") is None
    store.remember("b.gguf", "auto", LoadOptions(n_ctx=2048))
    assert store.last_settings("b.gguf")[1].n_ctx == 2048


def test_plan_cli_with_profile(sample_gguf):
    result = run_cli("plan", sample_gguf, "--profile", "cpu-8gb", "--json")
    assert result.returncode == 0, result.stderr
    import json

    plan = json.loads(result.stdout)
    assert plan["n_ctx"] == 4096 and plan["fits"]
    assert plan["devices"][0]["cap"] == 6 * 2**30
    refused = run_cli("plan", sample_gguf, "--n-ctx", "8192", "--max-ram", "0.2")
    assert refused.returncode == 1 and "DOES NOT FIT" in refused.stdout
