"""Preview dataset renders the model's chat template in the app process: a hostile template there is
stopped before it makes anything big (chat_template.py bounds every operator and filter), so the app
answers in a moment with one sentence instead of freezing (issue 15)."""

from __future__ import annotations

import json
import os

import pytest

from tests.robustness.conftest import HOSTILE_TEMPLATES
from workbench.chat_template import TemplateError
from workbench.paths import Paths
from workbench.services.training_service import TrainingService
from workbench.training.config import TrainConfig

RED_TEAM = ["chained-power", "center", "printf-width", "tojson-indent", "indent", "string-doubling", "list-sort",
            "lipsum"]


@pytest.fixture(scope="module")
def base(sample_transformers, tmp_path_factory):
    """The sample's Transformers form (weights linked, not copied) with a template file we can replace."""
    folder = tmp_path_factory.mktemp("hostile-base")
    for name in os.listdir(sample_transformers):
        if name != "chat_template.jinja":
            os.symlink(os.path.join(sample_transformers, name), folder / name)
    return folder


@pytest.mark.parametrize("name", RED_TEAM)
def test_preview_with_a_hostile_template_answers_with_one_sentence(base, tmp_path, name):
    (base / "chat_template.jinja").write_text(HOSTILE_TEMPLATES[name][0])
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    assert "chat_template" not in tokenizer_config  # the .jinja file is the template
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                       {"role": "assistant", "content": f"a{i}"}]})
                              for i in range(20)))
    training = TrainingService(Paths(str(tmp_path)))
    config = TrainConfig(name="p", method="lora", base_model=str(base), dataset=str(data), cutoff_len=64)
    with pytest.raises(TemplateError) as e:
        training.preview(config, trusted_paths=True)
    assert "\n" not in str(e.value) and "chat template" in str(e.value)
