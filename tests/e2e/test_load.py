"""Load: eight chat users in the UI and eight OpenAI-API clients at once, for two minutes.

One app (`--auth` for the UI, `--api-key` for the API, the sample model loaded) on a
scratch root. First every question is asked alone, greedily with a fixed seed, to learn
its reference reply; then sixteen users ask their own question over and over at the same
time: eight through the UI (gradio_client, each its own session, a new chat per question)
and eight through the API (half of them streaming). Every reply must equal its own
question's reference: a missing, failed or foreign answer is a failure; and every user must
be answered about as often as the others. The RSS of the
app and its model worker is sampled every few seconds: it must not grow much overall, nor
in the second half. WORKBENCH_LOAD_SECONDS shortens the run for a quick local check. No
timing assertions; a summary goes to test-artifacts/e2e/load-summary.json.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai
import pytest
from gradio_client import Client

from tests.api.test_api import wait_until_serving
from tests.conftest import SAMPLE_NAME
from tests.e2e.conftest import ARTIFACTS, launch, stop, tree_rss
from tests.ui.test_webui import free_port, reply_text, scratch_root

USER, PASSWORD, API_KEY = "load", "load-test-pass", "load-test-key"
SYSTEM = "You are a helpful assistant."
MAX_TOKENS = 16  # short replies: the two cores serve sixteen users one generation at a time
SEED = 7
# system prompt, temperature (0 = greedy), top_p, top_k, min_p, repetition penalty, max new tokens, seed
CHAT_ARGS = (SYSTEM, 0, 0.95, 40, 0.05, 1.0, MAX_TOKENS, SEED)
UI_QUESTIONS = [f"What is the capital of {country}?"
                for country in ("France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Brazil")]
API_QUESTIONS = [f"What colour is {thing}?"
                 for thing in ("a banana", "the sky", "grass", "snow", "coal", "a tomato", "an orange", "milk")]
RUN_S = float(os.environ.get("WORKBENCH_LOAD_SECONDS", 120))  # users keep asking this long; each asks at least once
RSS_GROWTH_LIMIT = 300 * 2**20  # generous: catches a leak per request, not allocator noise
LATE_RSS_GROWTH_LIMIT = 150 * 2**20  # over the second half, after caches and pools have warmed up
RSS_SAMPLE_S = 5
MiB = 2**20


@dataclass
class Exchange:
    user: str  # "ui-3", "api-5"
    question: str
    reply: str
    shown_question: str | None = None  # the user message the UI echoed back (None for the API)


@dataclass
class LoadRun:
    references: dict[str, str]  # question -> reply when asked alone
    exchanges: list[Exchange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_start: dict[int, int] = field(default_factory=dict)  # pid -> bytes, app and worker
    rss_end: dict[int, int] = field(default_factory=dict)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, app + worker bytes)
    chats_folder: str = ""


def ask_ui(client: Client, question: str) -> tuple[str, str]:
    """A new chat with one question; return (the user message shown, the reply)."""
    client.predict(api_name="/new_chat")
    chatbot, *_ = client.predict(question, *CHAT_ARGS, api_name="/chat")
    assert len(chatbot) == 2, f"a new chat holds one exchange, got {chatbot}"
    return reply_text(chatbot[:1]), reply_text(chatbot)


def ask_api(client: openai.OpenAI, question: str, stream: bool) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    kwargs = {"model": SAMPLE_NAME, "messages": messages, "temperature": 0, "seed": SEED, "max_tokens": MAX_TOKENS}
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = client.chat.completions.create(**kwargs, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def keep_asking(user: str, ask, question: str, deadline: float, run: LoadRun) -> None:
    """Ask `question` until the deadline (at least once), recording every exchange or the error."""
    try:
        while True:
            result = ask(question)
            shown, reply = result if isinstance(result, tuple) else (None, result)
            run.exchanges.append(Exchange(user, question, reply, shown))
            if time.time() > deadline:
                return
    except Exception as e:  # every failure is reported, none ends the run for the others
        run.errors.append(f"{user}: {type(e).__name__}: {e}")


def ui_user(url: str, index: int, deadline: float, run: LoadRun) -> None:
    client = Client(url, auth=(USER, PASSWORD), verbose=False)  # its own session
    keep_asking(f"ui-{index}", lambda q: ask_ui(client, q), UI_QUESTIONS[index], deadline, run)


def api_user(base_url: str, index: int, deadline: float, run: LoadRun) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=600)
    stream = index % 2 == 0
    keep_asking(f"api-{index}", lambda q: ask_api(client, q, stream), API_QUESTIONS[index], deadline, run)


@pytest.fixture(scope="module")
def load_run(tmp_path_factory, sample_gguf) -> LoadRun:
    root = scratch_root(tmp_path_factory.mktemp("load-root"), sample_gguf)
    api_port = free_port()
    app = launch("--model", SAMPLE_NAME, "--auth", f"{USER}:{PASSWORD}",
                 "--api", "--api-port", str(api_port), "--api-key", API_KEY, root=root)
    try:
        api_url = f"http://127.0.0.1:{api_port}"
        wait_until_serving(api_url + "/health")
        base_url = api_url + "/v1"
        alone_ui = Client(app.url, auth=(USER, PASSWORD), verbose=False)
        alone_api = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
        references = {q: ask_ui(alone_ui, q)[1] for q in UI_QUESTIONS}
        references.update({q: ask_api(alone_api, q, stream=False) for q in API_QUESTIONS})
        run = LoadRun(references, chats_folder=str(root / "user_data" / "chats"))
        run.rss_start = tree_rss(app)
        started = time.time()
        deadline = started + RUN_S
        with ThreadPoolExecutor(len(UI_QUESTIONS) + len(API_QUESTIONS)) as pool:
            users = [pool.submit(ui_user, app.url, i, deadline, run) for i in range(len(UI_QUESTIONS))]
            users += [pool.submit(api_user, base_url, i, deadline, run) for i in range(len(API_QUESTIONS))]
            while not all(u.done() for u in users):
                run.rss_samples.append((round(time.time() - started, 1), sum(tree_rss(app).values())))
                time.sleep(RSS_SAMPLE_S)
        run.rss_end = tree_rss(app)
    finally:
        stop(app)
    write_summary(run)
    return run


def write_summary(run: LoadRun) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    summary = {
        "exchanges": len(run.exchanges),
        "per_user": {u: sum(e.user == u for e in run.exchanges) for u in sorted({e.user for e in run.exchanges})},
        "errors": run.errors,
        "rss_start_mib": {str(pid): round(b / MiB, 1) for pid, b in run.rss_start.items()},
        "rss_end_mib": {str(pid): round(b / MiB, 1) for pid, b in run.rss_end.items()},
        "rss_samples_mib": [(at, round(b / MiB, 1)) for at, b in run.rss_samples],
        "references": run.references,
    }
    with open(os.path.join(ARTIFACTS, "load-summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def test_no_request_fails_and_every_user_is_answered(load_run):
    assert load_run.errors == []
    users = {e.user for e in load_run.exchanges}
    assert users == {f"ui-{i}" for i in range(8)} | {f"api-{i}" for i in range(8)}


def test_every_user_is_served_about_as_often_as_the_others(load_run):
    """Replies take turns in arrival order: a chat user in the browser waits no longer than an API client.

    Counts, not times: with fair turns each user gets about as many answers (40-41 each here);
    when the UI's users shared one slot between them, each got a tenth of an API client's share.
    """
    counts = {u: sum(e.user == u for e in load_run.exchanges) for u in {e.user for e in load_run.exchanges}}
    assert min(counts.values()) * 3 >= max(counts.values()), counts


def test_every_user_gets_the_answer_to_their_own_question(load_run):
    owner_of = {reply: q for q, reply in load_run.references.items()}
    assert len(owner_of) == len(load_run.references), "two questions share a reply: pick more distinct ones"
    for e in load_run.exchanges:
        if e.shown_question is not None:
            assert e.shown_question == e.question, f"{e.user} was shown another user's message"
        expected = load_run.references[e.question]
        assert e.reply.strip(), f"{e.user} got an empty reply"
        assert e.reply == expected, (
            f"{e.user} asked {e.question!r} and got the answer to {owner_of[e.reply]!r}" if e.reply in owner_of
            else f"{e.user} asked {e.question!r}: got {e.reply!r}, alone it gives {expected!r}")


def test_each_saved_conversation_holds_its_own_question_and_answer(load_run):
    files = sorted(n for n in os.listdir(load_run.chats_folder) if n.endswith(".json"))
    ui_exchanges = sum(e.user.startswith("ui-") for e in load_run.exchanges)
    assert len(files) == len(UI_QUESTIONS) + ui_exchanges  # the references were chats too
    for name in files:
        with open(os.path.join(load_run.chats_folder, name)) as f:
            messages = json.load(f)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"], name
        assert messages[1]["content"] == load_run.references[messages[0]["content"]], name


def test_memory_stays_stable(load_run):
    assert set(load_run.rss_end) == set(load_run.rss_start), "the app or its worker process changed"
    growth = sum(load_run.rss_end.values()) - sum(load_run.rss_start.values())
    assert growth < RSS_GROWTH_LIMIT, (
        f"app + worker RSS grew by {growth / MiB:.0f} MiB: {load_run.rss_start} -> {load_run.rss_end}")
    halfway = next(b for at, b in load_run.rss_samples if at >= RUN_S / 2)
    late_growth = sum(load_run.rss_end.values()) - halfway
    assert late_growth < LATE_RSS_GROWTH_LIMIT, f"app + worker RSS grew {late_growth / MiB:.0f} MiB in the second half"
