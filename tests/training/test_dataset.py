"""Datasets: shapes decided from content, assistant-only labels, bad rows by line, encodings."""

from __future__ import annotations

import json

import pytest

from workbench.training.dataset import (ALPACA, IGNORE, MESSAGES, SHAREGPT, TEXT, DatasetError, chunk_ids,
                                        load_dataset, preview, split_examples, tokenize_dataset)
from workbench.training.model_setup import byte_level_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def jsonl(rows):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


def test_raw_text_is_chunked_with_overlap(tmp_path, tokenizer):
    path = write(tmp_path, "notes.txt", "abcdefghij" * 10)  # 100 byte tokens
    raw = load_dataset(path)
    assert raw.format == TEXT
    ex = tokenize_dataset(raw, tokenizer, cutoff=40, overlap=10)
    assert [len(x) for x in ex.input_ids] == [40, 40, 40]
    assert ex.input_ids[0][30:] == ex.input_ids[1][:10]
    assert ex.labels == ex.input_ids


def test_chunking_limits():
    assert chunk_ids(list(range(10)), 8, 0) == [list(range(8)), [8, 9]]
    with pytest.raises(DatasetError, match="smaller than the cutoff"):
        chunk_ids(list(range(10)), 8, 8)


@pytest.mark.parametrize("row, fmt", [
    ({"instruction": "Say hi", "input": "", "output": "Hi!"}, ALPACA),
    ({"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]}, MESSAGES),
    ({"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "Hi!"}]}, SHAREGPT),
])
def test_chat_rows_train_only_on_the_assistant(tmp_path, tokenizer, row, fmt):
    path = write(tmp_path, "rows.jsonl", jsonl([row, row]))
    raw = load_dataset(path)
    assert raw.format == fmt
    ex = tokenize_dataset(raw, tokenizer, cutoff=256, template=tokenizer.chat_template)
    trained = [tok for tok, lab in zip(ex.input_ids[0], ex.labels[0]) if lab != IGNORE]
    assert tokenizer.decode(trained) == "Hi!<|im_end|>\n"
    assert "Say hi" in tokenizer.decode(ex.input_ids[0])


def test_a_json_list_works_like_jsonl(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]
    raw = load_dataset(write(tmp_path, "list.json", json.dumps(rows, indent=2)))
    assert raw.format == ALPACA and len(raw.conversations) == 2
    assert raw.conversations[1][0]["content"] == "c\n\nd"


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, "{not json", {"instruction": 3, "output": "x"},
            {"messages": []}, "[1, 2]", {"instruction": "ok", "output": ""}, {"instruction": "fine", "output": "yes"}]
    raw = load_dataset(write(tmp_path, "bad.jsonl", jsonl(rows)))
    assert len(raw.conversations) == 2
    assert raw.problems == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes)",
        "line 3: instruction, input and output must be strings",
        "line 4: not a alpaca row like the first one",
        "line 5: not a JSON object",
        "line 6: output is empty",
    ]


def test_bad_messages_name_the_message(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    raw = load_dataset(write(tmp_path, "m.jsonl", jsonl(rows)))
    assert raw.problems == ["line 1: message 2 has an unknown role 'wizard'",
                            "line 2: it has no assistant message to learn from"]


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("[{\"a\": 1},", "JSON list is broken at line 1"),
    (jsonl([{"text": "x"}, {"prompt": "y"}]), "no row in a known shape"),
    (jsonl(["{broken"]), "no row in a known shape"),
])
def test_unusable_files_get_one_sentence(tmp_path, content, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(write(tmp_path, "d.jsonl", content))


def test_utf16_with_a_bom_is_decoded(tmp_path):
    raw = load_dataset(write(tmp_path, "u16.txt", "héllo wörld".encode("utf-16"), "wb"))
    assert raw.encoding == "utf-16" and raw.text == "héllo wörld"


def test_other_encodings_are_reported(tmp_path):
    with pytest.raises(DatasetError, match=r"not UTF-8 \(byte 0xe9 at offset 1\).*Windows-1252"):
        load_dataset(write(tmp_path, "latin.txt", "héllo".encode("cp1252"), "wb"))


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match="Cannot read"):
        load_dataset(str(tmp_path / "nope.txt"))


def test_cutoff_that_leaves_no_assistant_token_is_explained(tmp_path, tokenizer):
    rows = [{"instruction": "x" * 300, "output": "y"}]
    raw = load_dataset(write(tmp_path, "long.jsonl", jsonl(rows)))
    with pytest.raises(DatasetError, match="raise the cutoff length"):
        tokenize_dataset(raw, tokenizer, cutoff=64, template=tokenizer.chat_template)


def test_split_and_preview(tmp_path, tokenizer):
    raw = load_dataset(write(tmp_path, "t.txt", "word " * 200))
    ex = tokenize_dataset(raw, tokenizer, cutoff=50, overlap=0)
    train, val = split_examples(ex, 0.2, seed=1)
    assert len(train.input_ids) + len(val.input_ids) == len(ex.input_ids) and len(val.input_ids) == 4
    assert split_examples(ex, 0.0, 1) == (ex, None)
    info = preview(raw, ex, tokenizer)
    assert info["format"] == TEXT and info["examples"] == 20 and info["tokens"] == 1000
    assert info["sample"].startswith("word word")
