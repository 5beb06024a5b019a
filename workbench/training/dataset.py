"""Training data: reading the user's file, checking its rows, and turning it into token examples.

Three shapes are understood, decided from the content (not the file name):
- raw text: the whole file is tokenized and cut into `cutoff`-token chunks that overlap;
- instruction rows (alpaca: instruction / input / output) and chat rows (OpenAI `messages`,
  ShareGPT `conversations`), as JSON (a list) or JSONL (one object per line). These are
  rendered with the model's chat template and only the assistant's tokens are trained on.
A bad row is reported with its line (JSONL) or item number (JSON list) and skipped; a file in
an encoding other than UTF-8 is decoded when it says so (a UTF-16 byte-order mark), else
reported with what it looks like. Everything here is plain Python plus a tokenizer.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from ..chat_template import render_chat
from ..errors import WorkbenchError

TEXT, ALPACA, MESSAGES, SHAREGPT = "text", "alpaca", "messages", "sharegpt"
MAX_DATASET_BYTES = 512 * 1024 * 1024
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
IGNORE = -100  # label of a token the loss skips


class DatasetError(WorkbenchError):
    """The dataset cannot be used as it is; the message says why and what to do."""


@dataclass
class RawDataset:
    """A file's content, before tokenization."""

    path: str
    format: str                                        # text, alpaca, messages or sharegpt
    text: str = ""                                     # for TEXT
    conversations: list[list[dict]] = field(default_factory=list)  # for the row formats
    problems: list[str] = field(default_factory=list)  # skipped rows, with their line numbers
    encoding: str = "utf-8"


@dataclass
class TokenExamples:
    """Tokenized examples ready for training: input ids and labels (IGNORE where not trained)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int = 0        # examples cut at the cutoff length
    dropped: int = 0          # examples left with no trained token

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != IGNORE) for lab in self.labels)


def read_text(path: str) -> tuple[str, str]:
    """(text, encoding) of a file: UTF-8, or UTF-16 with a byte-order mark; else a DatasetError."""
    try:
        size = os.path.getsize(path)
        if size > MAX_DATASET_BYTES:
            raise DatasetError(f"{os.path.basename(path)} is {size / 2**20:.0f} MiB; the limit is "
                               f"{MAX_DATASET_BYTES // 2**20} MiB, split it into smaller files.")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"Cannot read {path} ({e.strerror or e}); check the file exists and is readable.") from e
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as e:
        raise DatasetError(f"{os.path.basename(path)} is not UTF-8 (byte 0x{data[e.start]:02x} at offset "
                           f"{e.start}); {_encoding_guess(data)}") from e


def _encoding_guess(data: bytes) -> str:
    """What a non-UTF-8 file probably is, as the end of a sentence: text in another encoding, or not text."""
    head = data[:4096]
    if head[:200].count(b"\x00") > 20:
        return "it looks like UTF-16 without a byte-order mark: save it as UTF-8 and try again."
    # Text in a legacy 8-bit encoding has no control bytes but tab and newlines; binary data has plenty.
    controls = sum((b < 32 and b not in (9, 10, 12, 13)) or b == 127 for b in head)
    if controls > 0.01 * len(head):
        return "it does not look like text at all (a binary file?): pick a .txt, .md, .json or .jsonl file."
    return "it looks like Windows-1252 or Latin-1: save it as UTF-8 and try again."


def _row_format(row: dict) -> str | None:
    if isinstance(row.get("messages"), list):
        return MESSAGES
    if isinstance(row.get("conversations"), list):
        return SHAREGPT
    if "instruction" in row and "output" in row:
        return ALPACA
    return None


def _conversation(row: dict, fmt: str) -> list[dict]:
    """The row as chat messages; raises ValueError with the reason when the row is bad."""
    if fmt == ALPACA:
        instruction, extra, output = row.get("instruction"), row.get("input", ""), row.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
            raise ValueError("instruction, input and output must be strings")
        if not output.strip():
            raise ValueError("output is empty")
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": row["system"]})
        return messages
    items = row["messages"] if fmt == MESSAGES else row["conversations"]
    messages = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise ValueError(f"message {i + 1} is not an object")
        if fmt == MESSAGES:
            role, content = m.get("role"), m.get("content")
        else:
            role, content = SHAREGPT_ROLES.get(str(m.get("from", "")).lower()), m.get("value")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i + 1} has an unknown role {m.get('role', m.get('from'))!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i + 1} has no text content")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("it has no assistant message to learn from")
    return messages


def _rows(text: str) -> tuple[list[tuple[str, object]], list[str]]:
    """(where, value) rows of a JSON list or JSONL text, and the problems met while parsing."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"The JSON list is broken at line {e.lineno}, column {e.colno} ({e.msg}); fix it or use JSONL.") from e
        return [(f"item {i + 1}", row) for i, row in enumerate(value)], []
    rows, problems = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not valid JSON ({e.msg})")
    return rows, problems


def looks_like_json(text: str) -> bool:
    head = text.lstrip()[:1]
    return head in ("[", "{")


def load_dataset(path: str) -> RawDataset:
    """Read `path` and decide its shape; bad rows are skipped and listed in `problems`."""
    text, encoding = read_text(path)
    if not text.strip():
        raise DatasetError(f"{os.path.basename(path)} is empty; give a file with training text.")
    if not looks_like_json(text):
        return RawDataset(path=path, format=TEXT, text=text, encoding=encoding)
    rows, problems = _rows(text)
    fmt = None
    for where, row in rows:
        if isinstance(row, dict) and (fmt := _row_format(row)):
            break
    if fmt is None:
        raise DatasetError(
            f"{os.path.basename(path)} has no row in a known shape; use alpaca rows (instruction/input/output), "
            "OpenAI chat rows ({\"messages\": [...]}) or ShareGPT rows ({\"conversations\": [...]})."
        )
    conversations = []
    for where, row in rows:
        if not isinstance(row, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        if _row_format(row) != fmt:
            problems.append(f"{where}: not a {fmt} row like the first one")
            continue
        try:
            conversations.append(_conversation(row, fmt))
        except ValueError as e:
            problems.append(f"{where}: {e}")
    if not conversations:
        raise DatasetError(f"No usable row in {os.path.basename(path)}: {problems[0] if problems else 'empty'}.")
    return RawDataset(path=path, format=fmt, conversations=conversations, problems=problems, encoding=encoding)


def chunk_ids(ids: list[int], cutoff: int, overlap: int) -> list[list[int]]:
    """Cut a long token list into `cutoff`-token windows that share `overlap` tokens."""
    if cutoff < 8:
        raise DatasetError(f"Cutoff length {cutoff} is too small; use at least 8 tokens.")
    if not 0 <= overlap < cutoff:
        raise DatasetError(f"Overlap {overlap} must be at least 0 and smaller than the cutoff length {cutoff}.")
    step = cutoff - overlap
    chunks = []
    for start in range(0, max(len(ids) - overlap, 1), step):
        chunk = ids[start:start + cutoff]
        if len(chunk) >= 2:
            chunks.append(chunk)
    return chunks


def _assistant_spans(messages: list[dict], template: str | None, bos: str, eos: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (with its end marker)."""
    full = render_chat(messages, template, bos, eos, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render_chat(messages[:i], template, bos, eos, add_generation_prompt=True)) if i else 0
        end = len(render_chat(messages[:i + 1], template, bos, eos, add_generation_prompt=False))
        spans.append((start, end))
    return full, spans


def tokenize_dataset(raw: RawDataset, tokenizer, cutoff: int, overlap: int = 0, template: str | None = None) -> TokenExamples:
    """Token examples of `raw` for a Hugging Face fast tokenizer; chat rows train on assistant tokens only."""
    if raw.format == TEXT:
        ids = tokenizer(raw.text, add_special_tokens=False)["input_ids"]
        chunks = chunk_ids(ids, cutoff, overlap)
        if not chunks:
            raise DatasetError(f"{os.path.basename(raw.path)} has fewer than 2 tokens; give a longer text.")
        return TokenExamples(input_ids=chunks, labels=[list(c) for c in chunks])
    bos = getattr(tokenizer, "bos_token", None) or ""
    eos = getattr(tokenizer, "eos_token", None) or ""
    result = TokenExamples(input_ids=[], labels=[])
    for messages in raw.conversations:
        text, spans = _assistant_spans(messages, template, bos, eos)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [tok if any(s <= start < e for s, e in spans) else IGNORE for tok, (start, _) in zip(ids, offsets)]
        if len(ids) > cutoff:
            ids, labels = ids[:cutoff], labels[:cutoff]
            result.truncated += 1
        if all(lab == IGNORE for lab in labels[1:]):
            result.dropped += 1
            continue
        result.input_ids.append(ids)
        result.labels.append(labels)
    if not result.input_ids:
        raise DatasetError(
            f"No example of {os.path.basename(raw.path)} keeps an assistant token within the cutoff length "
            f"{cutoff}; raise the cutoff length."
        )
    return result


def split_examples(examples: TokenExamples, fraction: float, seed: int) -> tuple[TokenExamples, TokenExamples | None]:
    """Hold out `fraction` of the examples (at least one) for validation; None when fraction is 0."""
    if fraction <= 0:
        return examples, None
    if not 0 < fraction < 1:
        raise DatasetError(f"The validation fraction must be between 0 and 1, not {fraction}.")
    n = len(examples.input_ids)
    if n < 2:
        raise DatasetError("The dataset has a single example, too few to hold some out for validation; "
                           "set the validation fraction to 0 or give a validation file.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = max(1, round(n * fraction))
    held, kept = sorted(order[:k]), sorted(order[k:])

    def pick(idx):
        return TokenExamples([examples.input_ids[i] for i in idx], [examples.labels[i] for i in idx])

    return pick(kept), pick(held)


def preview(raw: RawDataset, examples: TokenExamples, tokenizer, template: str | None = None) -> dict:
    """What the Training tab shows before a run: counts, problems and one rendered example."""
    if raw.format == TEXT:
        sample = tokenizer.decode(examples.input_ids[0])
    else:
        sample = render_chat(raw.conversations[0], template, getattr(tokenizer, "bos_token", None) or "",
                             getattr(tokenizer, "eos_token", None) or "", add_generation_prompt=False)
    return {
        "format": raw.format,
        "encoding": raw.encoding,
        "examples": len(examples.input_ids),
        "tokens": examples.tokens,
        "trained_tokens": examples.trained_tokens,
        "truncated": examples.truncated,
        "dropped": examples.dropped,
        "problems": raw.problems[:50],
        "problem_count": len(raw.problems),
        "sample": sample[:4000],
    }
