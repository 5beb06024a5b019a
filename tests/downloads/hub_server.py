"""A local server that speaks the Hugging Face Hub's HTTP API as huggingface_hub uses it, for tests.

Routes: `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}` (siblings with sizes, blob
ids and LFS sha256 when `?blobs=true`), `GET /api/models/{repo}/tree/{rev}`, and `HEAD`/`GET
/{repo}/resolve/{rev}/{file}`: a small file is served from the hub host with its git blob id as
ETag; an LFS file (weights) answers 302 to a "CDN" on another host name (`localhost` instead of
`127.0.0.1`, so huggingface_hub reads X-Linked-Etag / X-Linked-Size from the redirect as it does
on the real hub) which serves it with Range support. Gated repos answer 401 without a token and
403 with a wrong one; unknown repos 401 with X-Error-Code RepoNotFound, as the hub does.

Faults, set per test on `server.faults`: `throttle_bps` (bytes per second per response),
`drop_at` (file offsets where the connection is cut mid-body, each once), `stall_at` (offsets
where the body pauses `stall_s` seconds, each once), `corrupt_at` (a file offset whose byte is
flipped in every body), `fail_next` (statuses the next body GETs answer with instead, e.g. 503). `served` counts body bytes per file; `requests` logs (method, path, range).

Use: `with FakeHub({"org/name": {"model.gguf": "/path/or/bytes"}}) as hub: os.environ["HF_ENDPOINT"] = hub.url`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")


@dataclass
class Faults:
    throttle_bps: float | None = None
    drop_at: list[int] = field(default_factory=list)
    stall_at: list[int] = field(default_factory=list)
    stall_s: float = 0.0
    corrupt_at: int | None = None
    fail_next: list[int] = field(default_factory=list)  # statuses the next body GETs answer with (503, 429)


@dataclass
class HubFile:
    name: str
    path: str | None          # served from disk (large files), or
    data: bytes | None        # from memory
    size: int
    sha256: str
    blob_id: str

    @property
    def lfs(self) -> bool:
        return self.name.endswith(LFS_SUFFIXES)

    @classmethod
    def make(cls, name: str, source) -> "HubFile":
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            sha = hashlib.sha256(data).hexdigest()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            return cls(name, None, data, len(data), sha, blob)
        sha, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % os.path.getsize(source))
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                sha.update(block)
                blob.update(block)
        return cls(name, str(source), None, os.path.getsize(source), sha.hexdigest(), blob.hexdigest())

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


class FakeHub:
    """The server; a context manager. `repos`: {repo_id: {filename: bytes or path}}; `gated`: repo ids."""

    def __init__(self, repos: dict, gated: tuple[str, ...] = (), token: str = "hf_test_token"):
        self.repos = {rid: {n: HubFile.make(n, src) for n, src in files.items()} for rid, files in repos.items()}
        self.commits = {rid: hashlib.sha1(rid.encode()).hexdigest() for rid in repos}
        self.gated, self.token = set(gated), token
        self.faults = Faults()
        self.served: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bytes_served(self, name: str | None = None) -> int:
        with self.lock:
            return self.served.get(name, 0) if name else sum(self.served.values())

    def reset_counts(self) -> None:
        with self.lock:
            self.served.clear()
            self.requests.clear()

    def siblings(self, repo_id: str, blobs: bool) -> list[dict]:
        out = []
        for f in self.repos[repo_id].values():
            row = {"rfilename": f.name}
            if blobs:
                row.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    row["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            out.append(row)
        return out


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(),
                       {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"})

        def _authorized(self, repo_id: str) -> int | None:
            """None when allowed, else the status to answer."""
            if repo_id not in hub.gated:
                return None
            auth = self.headers.get("Authorization", "")
            if not auth:
                return 401
            return None if auth == f"Bearer {hub.token}" else 403

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[0] == "api" and len(parts) >= 4 and parts[1] == "models":
                return self._api(parts[2] + "/" + parts[3], parts[4:], parse_qs(url.query))
            if parts[0] == "cdn" and len(parts) >= 3:
                return self._cdn(parts[1] + "/" + parts[2], "/".join(parts[3:]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            self._error(404, "EntryNotFound", "no such route")

        def _api(self, repo_id: str, rest: list[str], query: dict) -> None:
            if repo_id not in hub.repos:
                return self._error(401, "RepoNotFound", "Repository not found")
            commit = hub.commits[repo_id]
            if rest and rest[0] == "tree":
                tree = [{"type": "file", "path": f.name, "size": f.size, "oid": f.blob_id,
                         **({"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} if f.lfs else {})}
                        for f in hub.repos[repo_id].values()]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            if rest and rest[0] == "revision" and rest[1:] and rest[1] not in ("main", commit):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            info = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "manual" if repo_id in hub.gated else False, "disabled": False, "tags": [],
                    "siblings": hub.siblings(repo_id, query.get("blobs") == ["true"])}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo_id: str, revision: str, name: str) -> None:
            if repo_id not in hub.repos:
                return self._error(401, "RepoNotFound", "Repository not found")
            denied = self._authorized(repo_id)
            if denied:
                return self._error(denied, "GatedRepo", f"Access to model {repo_id} is restricted")
            f = hub.repos[repo_id].get(name)
            if f is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            common = {"X-Repo-Commit": hub.commits[repo_id], "Accept-Ranges": "bytes"}
            if f.lfs:
                location = f"{hub.cdn}/cdn/{repo_id}/{name}"
                return self._send(302, b"", {**common, "Location": location, "ETag": f'"{f.blob_id}"',
                                             "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
            self._body(f, {**common, "ETag": f'"{f.blob_id}"'})

        def _cdn(self, repo_id: str, name: str) -> None:
            f = hub.repos.get(repo_id, {}).get(name)
            if f is None:
                return self._error(404, "EntryNotFound", "no such object")
            self._body(f, {"ETag": f'"{f.sha256}"'})

        def _body(self, f: HubFile, headers: dict) -> None:
            with hub.lock:
                failure = hub.faults.fail_next.pop(0) if hub.faults.fail_next and self.command == "GET" else None
            if failure:
                return self._error(failure, "ServiceUnavailable", "try again later")
            start, end = 0, f.size
            wanted = self.headers.get("Range")
            status = 200
            if wanted and wanted.startswith("bytes="):
                a, _, b = wanted[6:].partition("-")
                start = int(a or 0)
                end = min(int(b) + 1, f.size) if b else f.size
                if start >= f.size:
                    return self._send(416, b"", {"Content-Range": f"bytes */{f.size}"})
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{f.size}"}
            self.send_response(status)
            for k, v in {**headers, "Content-Type": "application/octet-stream"}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if self.command == "HEAD":
                return
            self._stream(f, start, end)

        def _stream(self, f: HubFile, start: int, end: int) -> None:
            pos, chunk, t0 = start, 64 << 10, time.monotonic()
            while pos < end:
                with hub.lock:
                    faults = hub.faults
                    drop = next((d for d in faults.drop_at if pos <= d < end), None)
                    stall = next((s for s in faults.stall_at if pos <= s < end), None)
                stop = min(end, pos + chunk, *(x for x in (drop, stall) if x is not None and x > pos))
                if drop is not None and pos == drop:
                    with hub.lock:
                        faults.drop_at.remove(drop)
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if stall is not None and pos == stall:
                    with hub.lock:
                        faults.stall_at.remove(stall)
                    time.sleep(faults.stall_s)
                    continue
                data = bytearray(f.read(pos, stop))
                if faults.corrupt_at is not None and pos <= faults.corrupt_at < stop:
                    data[faults.corrupt_at - pos] ^= 0xFF
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                pos = stop
                with hub.lock:
                    hub.served[f.name] = hub.served.get(f.name, 0) + len(data)
                if faults.throttle_bps:
                    ahead = (pos - start) / faults.throttle_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler
