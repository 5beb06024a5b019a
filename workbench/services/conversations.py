"""Saved conversations: one JSON file per conversation in user_data/chats/.

Every save is atomic (a crash mid-write leaves the previous file). Listing skips a
corrupt file and reports it while the others load. Ids are generated here and checked
on the way in, so a client cannot name a path. Export writes Markdown.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field

from ..atomic import write_json_atomic
from ..errors import WorkbenchError
from ..trash import Trash
from ..paths import resolve_inside

_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
MAX_TITLE = 120


class ConversationError(WorkbenchError):
    """A conversation is missing, corrupt, or named badly."""


@dataclass
class Conversation:
    id: str
    title: str = "New chat"
    system_prompt: str = ""
    messages: list[dict] = field(default_factory=list)  # {"role": "user"|"assistant", "content": str}
    model: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @classmethod
    def from_dict(cls, data: dict) -> "Conversation":
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
                for m in messages):
            raise ConversationError("its messages are malformed")
        return cls(id=str(data["id"]), title=str(data.get("title") or "New chat"),
                   system_prompt=str(data.get("system_prompt") or ""), messages=messages,
                   model=data.get("model"), created=float(data.get("created") or 0),
                   updated=float(data.get("updated") or 0))


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return (line[:60] + "...") if len(line) > 60 else (line or "New chat")


def remove_turn(conv: Conversation, turn: int) -> str:
    """Remove turn `turn` (1 = the first user message, with the replies that follow it); return its text."""
    starts = [i for i, m in enumerate(conv.messages) if m["role"] == "user"]
    if not 1 <= turn <= len(starts):
        raise ConversationError(f"There is no turn {turn}; this conversation has {len(starts)}.")
    start = starts[turn - 1]
    end = starts[turn] if turn < len(starts) else len(conv.messages)
    text = conv.messages[start]["content"]
    del conv.messages[start:end]
    return text


def file_title(title: str, limit: int = 80) -> str:
    """`title` as a file name: letters, digits, spaces, '-', '_' and '.', at most `limit` characters."""
    import re

    name = re.sub(r"[^\w .-]+", "", title or "", flags=re.UNICODE)
    name = " ".join(name.split()).strip(" .")[:limit].strip(" .")
    return name or "conversation"


def to_markdown(conv: Conversation) -> str:
    out = [f"# {conv.title}", ""]
    if conv.system_prompt:
        out += [f"*System:* {conv.system_prompt}", ""]
    for m in conv.messages:
        out += [f"**{'You' if m['role'] == 'user' else 'Assistant'}:**", "", m["content"], ""]
    return "\n".join(out)


class ConversationStore:
    def __init__(self, folder: str):
        self.folder = folder  # user_data/chats

    def _path(self, conv_id: str) -> str:
        if not isinstance(conv_id, str) or not _ID.match(conv_id):
            raise ConversationError(f"{conv_id!r} is not a conversation id; pick one from the list.")
        return resolve_inside(self.folder, conv_id + ".json", "conversation")

    def new(self, system_prompt: str = "", model: str | None = None) -> Conversation:
        return Conversation(id=new_id(), system_prompt=system_prompt, model=model)

    def save(self, conv: Conversation) -> None:
        conv.updated = time.time()
        if conv.title == "New chat" and conv.messages:
            conv.title = title_from(conv.messages[0]["content"])
        write_json_atomic(self._path(conv.id), asdict(conv))

    def get(self, conv_id: str) -> Conversation:
        path = self._path(conv_id)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return Conversation.from_dict(data)
        except FileNotFoundError:
            raise ConversationError(f"There is no saved conversation {conv_id}.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                ConversationError) as e:
            raise ConversationError(f"Conversation {conv_id} is damaged ({e}); it was skipped.") from e

    def list(self) -> tuple[list[dict], list[str]]:
        """(rows newest first: id, title, updated, turns; one error sentence per unreadable file)."""
        rows, errors = [], []
        if not os.path.isdir(self.folder):
            return rows, errors
        for name in os.listdir(self.folder):
            if not name.endswith(".json") or not _ID.match(name[:-5]):
                continue
            try:
                c = self.get(name[:-5])
            except WorkbenchError as e:  # damaged, or a link that leads out of chats/: report, list the rest
                errors.append(str(e))
                continue
            rows.append({"id": c.id, "title": c.title, "updated": c.updated, "turns": len(c.messages)})
        rows.sort(key=lambda r: r["updated"], reverse=True)
        return rows, errors

    def rename(self, conv_id: str, title: str) -> Conversation:
        title = " ".join((title or "").split())[:MAX_TITLE]
        if not title:
            raise ConversationError("A title cannot be empty.")
        conv = self.get(conv_id)
        conv.title = title
        self.save(conv)
        return conv

    def delete(self, conv_id: str) -> None:
        """Move the conversation aside (`undo_delete` brings it back)."""
        path = self._path(conv_id)
        if not os.path.exists(path):
            raise ConversationError(f"There is no saved conversation {conv_id}.")
        Trash(self.folder).put(path)

    def keep_previous(self, conv_id: str) -> None:
        """Keep the saved version aside before a change that loses text (deleting a turn), for undo."""
        path = self._path(conv_id)
        if os.path.exists(path):
            Trash(self.folder).put(path, copy=True)

    def undo_delete(self) -> Conversation:
        """Bring back the conversation deleted (or cut short) last, as it was."""
        name = Trash(self.folder).restore_latest(self.folder, "conversation or turn")
        return self.get(name[: -len(".json")])

    def export_markdown(self, conv_id: str, out_folder: str) -> str:
        """Write the conversation as Markdown into `out_folder`; return the file's path."""
        conv = self.get(conv_id)
        # Named by its title (what a person looks for in Downloads), in a folder per conversation so two
        # conversations with one title do not overwrite each other.
        folder = os.path.join(out_folder, conv.id)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{file_title(conv.title)}.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_markdown(conv))
        return path
