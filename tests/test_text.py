"""Stop strings, chat templates (sandboxed), option validation, safe names."""

from __future__ import annotations

import pytest

from workbench.chat_template import TemplateError, render_chat
from workbench.errors import PathOutsideModels, WorkbenchError
from workbench.options import GenParams, LoadOptions
from workbench.paths import resolve_inside
from workbench.stop_strings import StopMatcher


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return (out if m.stopped else out + m.flush()), m.stopped


def test_stop_string_split_across_tokens_is_never_shown():
    assert feed_all(["###"], ["Hello #", "#", "# world"]) == ("Hello ", True)


def test_held_back_text_is_released_when_no_stop_follows():
    assert feed_all(["###"], ["a #", "b"]) == ("a #b", False)


def test_no_stops_passes_through():
    assert feed_all([], ["a", "b"]) == ("ab", False)


def test_earliest_of_several_stops_wins():
    assert feed_all(["END", "\n\n"], ["one\n\ntwo END"]) == ("one", True)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_chatml_fallback_when_model_has_no_template():
    text = render_chat(MESSAGES, None)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("hostile", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% for m in messages %}{{ m.pop('role') }}{% endfor %}",
    "{{ raise_exception('no users allowed') }}",
    "{% for x in range(10) %",
])
def test_hostile_or_broken_templates_are_stopped(hostile):
    with pytest.raises(TemplateError):
        render_chat(MESSAGES, hostile)


def test_bad_messages_are_refused():
    with pytest.raises(WorkbenchError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}], None)
    with pytest.raises(WorkbenchError, match="at least one"):
        render_chat([], None)


def test_options_reject_bad_values_and_unknown_keys():
    with pytest.raises(WorkbenchError, match="Unknown load option"):
        LoadOptions.from_dict({"n_ctx": 512, "turbo": True})
    with pytest.raises(WorkbenchError, match="cache type"):
        LoadOptions(cache_type="q2").validate()
    with pytest.raises(WorkbenchError, match="temperature"):
        GenParams(temperature=-1).validate()
    assert GenParams.from_dict({"stop": ["", "x"]}).stop == ["x"]


def test_names_resolve_inside_their_folder(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "out").symlink_to("/etc")
    assert resolve_inside(str(tmp_path), "a.gguf") == str((tmp_path / "a.gguf").resolve())
    for bad in ("../x", "/etc/passwd", "a/../../x", "out/passwd", "", "a\\b", "nul\x00"):
        with pytest.raises(PathOutsideModels):
            resolve_inside(str(tmp_path), bad)


def test_model_names_pick_entries_of_models(tmp_path):
    from workbench.paths import resolve_entry

    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "elsewhere").symlink_to("/tmp")  # the owner's own link: allowed
    assert resolve_entry(str(tmp_path), "a.gguf").endswith("a.gguf")
    assert resolve_entry(str(tmp_path), "elsewhere") == str(tmp_path / "elsewhere")
    for bad in ("../a.gguf", "/etc/passwd", "elsewhere/passwd", "missing.gguf", ".hidden", "", "a\\b"):
        with pytest.raises(PathOutsideModels):
            resolve_entry(str(tmp_path), bad)
