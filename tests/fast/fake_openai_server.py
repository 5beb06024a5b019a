"""A tiny OpenAI-compatible server in a thread, for the remote backend's fast tests.

It serves one model ("tiny") behind a key, streams a fixed reply word by word with a delay,
records what each request asked and whether its client hung up mid-stream, and can be told
to stall (for timeouts) or to answer with an error status.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "fake-remote-key"
MODEL = "tiny"


class FakeOpenAI:
    def __init__(self, reply: str = "one two three four five", token_delay_s: float = 0.0):
        self.reply, self.token_delay_s = reply, token_delay_s
        self.stall_s = 0.0              # sleep before answering a completion (timeouts)
        self.requests: list[dict] = []  # bodies of the completion requests
        self.hung_up = threading.Event()  # a client closed its stream before the reply ended
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _json(self, status: int, value: dict) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                owner.requests.append(body)
                if self.path == "/v1/embeddings":
                    self._json(200, {"data": [{"index": i, "embedding": [float(len(t)), 1.0]}
                                              for i, t in enumerate(body["input"])],
                                     "usage": {"prompt_tokens": 7}})
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._json(404, {"error": {"message": "no such route"}})
                    return
                if body.get("model") != MODEL:
                    self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                time.sleep(owner.stall_s)
                chat = self.path.endswith("chat/completions")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = owner.reply.split(" ")
                words = [w + " " for w in words[:-1]] + words[-1:]
                budget = body.get("max_tokens", 10**6)
                with owner._lock:
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                try:
                    for i, word in enumerate(words[:budget]):
                        time.sleep(owner.token_delay_s)
                        choice = {"index": 0, "finish_reason": None}
                        choice.update({"delta": {"content": word}} if chat else {"text": word})
                        if body.get("logprobs"):
                            choice["logprobs"] = {"content": [{"token": word, "bytes": list(word.encode()),
                                                               "logprob": -0.5, "top_logprobs": []}]}
                        self._send({"choices": [choice]})
                    finish = "length" if budget < len(words) else "stop"
                    self._send({"choices": [{"index": 0, "delta": {}, "text": "", "finish_reason": finish}]})
                    self._send({"choices": [], "usage": {"prompt_tokens": 11,
                                                         "completion_tokens": min(budget, len(words))}})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    owner.hung_up.set()
                finally:
                    with owner._lock:
                        owner.active -= 1

            def _send(self, chunk: dict) -> None:
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
