"""Launch the Model Workbench UI: parse flags, build the services, launch Gradio.

    python webui.py [--model NAME] [--listen | --host ADDR] [--port N] [--share] [--auth USER:PASS]
                    [--allowed-host NAME]... [--max-upload-mib N]
                    [--api [--api-port 5000] [--api-key KEY]] [--api-only]

--listen or --share without --auth makes a random password, prints it once and requires it;
the API then requires it too (as its key) unless --api-key sets another.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workbench.load_flags import add_load_flags, load_options_from_args, profile_store  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.paths import Paths  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Model Workbench web UI")
    p.add_argument("--model", help="model in models/ (or a path) to load at start")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so other machines can connect (needs auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="make a public Gradio share link (needs auth)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--api", action="store_true", help="also serve the OpenAI-compatible API")
    p.add_argument("--api-only", action="store_true", help="serve only the API, no web UI")
    p.add_argument("--api-port", type=int, default=5000)
    p.add_argument("--api-key", help="key API clients must send (required when the API is reachable from the network)")
    p.add_argument("--api-cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (repeatable; closed by default)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the UI and API answer to besides the bound address and localhost "
                        "(repeatable; e.g. the machine's LAN name or a reverse proxy's)")
    p.add_argument("--max-upload-mib", type=int, default=1024, metavar="N",
                   help="largest file the UI accepts as an upload, in MiB (default 1024)")
    p.add_argument("--preset", dest="profile", help="hardware profile from presets/hardware/ (same as --profile)")
    add_load_flags(p)
    return p.parse_args(argv)


def exposed(args) -> bool:
    return bool(args.listen or args.share or args.host not in ("127.0.0.1", "localhost", "::1"))


def resolve_auth(args) -> tuple[str, str] | None:
    """The login to require: --auth, or a fresh random one when the app is exposed."""
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise WorkbenchError("--auth must look like USER:PASS.")
        return user, password
    if exposed(args):
        password = secrets.token_urlsafe(12)
        print(f"[webui] The app is reachable from the network, so it needs a login: user 'workbench', password '{password}'",
              flush=True)
        return "workbench", password
    return None


# The API server's connection limits: more connections than this get 503 at once; an idle
# keep-alive connection closes after a few seconds; request heads are capped (h11).
API_MAX_CONNECTIONS = 1000
API_KEEP_ALIVE_S = 5
API_MAX_HEAD_BYTES = 64 * 1024
UI_MAX_BODY = 32 << 20  # a UI event's JSON (a long conversation is a few MiB)
UI_SHUTDOWN_GRACE_S = 1  # on Ctrl+C, how long open browser tabs' streams may hold the server


def raise_open_file_limit(wanted: int) -> None:
    """Let the process hold `wanted` connections and files (the soft limit is often 1024; the hard one more)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def host_policy(args, host: str):
    from workbench.http_guard import HostPolicy

    return HostPolicy(bound=host, allowed=tuple(args.allowed_host), share=bool(args.share))


def start_api(models, host: str, port: int, api_key: str | None, cors: list[str], background: bool, hosts=None,
              throttle=None):
    """The OpenAI-compatible API on host:port; in a thread beside the UI, or returned to run in the foreground."""
    import threading

    import uvicorn

    from workbench.api.server import build_api

    server = uvicorn.Server(uvicorn.Config(build_api(models, api_key, cors, hosts, throttle), host=host, port=port,
                                           log_level="warning", timeout_graceful_shutdown=3,
                                           limit_concurrency=API_MAX_CONNECTIONS, timeout_keep_alive=API_KEEP_ALIVE_S,
                                           h11_max_incomplete_event_size=API_MAX_HEAD_BYTES))
    key_note = "key required" if api_key else "no key (this machine only)"
    print(f"[webui] OpenAI-compatible API on http://{host}:{port}/v1 ({key_note})", flush=True)
    if background:
        threading.Thread(target=server.run, name="api", daemon=True).start()
    return server


def share_reachable(timeout: float = 3.0) -> bool:
    """Whether Gradio's share-link server can be reached (it needs the internet)."""
    import socket
    from urllib.parse import urlparse

    from gradio.networking import GRADIO_API_SERVER

    # WORKBENCH_SHARE_SERVER=host:port overrides the address (tests point it at a closed local port).
    host, _, port = (os.environ.get("WORKBENCH_SHARE_SERVER") or f"{urlparse(GRADIO_API_SERVER).hostname}:443").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv=None) -> int:
    from workbench.backends.registry import default_registry
    from workbench.generation_presets import GenerationPresetStore
    from workbench.jobs import JobService
    from workbench.services.chat_service import ChatService
    from workbench.services.compare_service import CompareService
    from workbench.services.conversations import ConversationStore
    from workbench.services.model_service import ModelService
    from workbench.services.training_service import TrainingService
    from workbench.ui.app import APP_CSS, build_app

    args = parse_args(argv)
    # Slow clients hold a connection each: with the soft limit (often 1,024 files) a thousand of them left
    # the UI unable to accept anyone; the hard limit is usually far higher.
    raise_open_file_limit(4 * API_MAX_CONNECTIONS + 1024)
    paths = Paths.default()
    profiles = profile_store(paths)
    try:
        registry = default_registry()
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    models = ModelService(paths, registry=registry)
    try:
        auth = resolve_auth(args)
        options = load_options_from_args(args, paths)
        profiles.ensure_this_machine(models.hardware())
        warning = profiles.get(args.profile).warning(models.hardware()) if args.profile else None
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if warning:
        print(f"[webui] warning: {warning}", flush=True)
    if args.model:
        path = models.locate(args.model)
        print(f"[webui] loading {args.model}...", flush=True)
        try:
            loaded = models.load(path, args.loader, options)
            print(f"[webui] loaded with {loaded.backend} in {loaded.load_s:.1f} s", flush=True)
        except WorkbenchError as e:
            print(f"[webui] could not load {args.model}: {e} (the UI starts without a model)", flush=True)
    host = "0.0.0.0" if args.listen else args.host
    from workbench.http_guard import FailureThrottle

    throttle = FailureThrottle()  # wrong logins and wrong API keys count together: the password is the key
    api_key = args.api_key or (auth[1] if auth and exposed(args) else None)
    if args.api or args.api_only:
        server = start_api(models, host, args.api_port, api_key, args.api_cors_origin, background=not args.api_only,
                           hosts=host_policy(args, host), throttle=throttle)
        if args.api_only:
            try:
                server.run()
            finally:
                models.close()
            return 0
    chat = ChatService(models, ConversationStore(os.path.join(paths.user_data, "chats")))
    presets = GenerationPresetStore(os.path.join(paths.presets, "generation"))
    second = ModelService(paths, slot="b", registry=registry)
    compare = CompareService(models, second)
    training = TrainingService(paths, runner=os.environ.get("WORKBENCH_TRAINING_RUNNER", "workbench.training.runner"))
    app = build_app(models, chat, compare, profiles, presets, options, os.path.join(paths.user_data, "exports"),
                    training, JobService(paths), args.loader)
    share = args.share
    if share and not share_reachable():
        print("[webui] --share needs the internet and Gradio's share server is unreachable; serving locally only.",
              flush=True)
        share = False
    from starlette.middleware import Middleware

    from workbench.http_guard import GuardRules, RequestGuard, json_reply

    max_upload = args.max_upload_mib << 20
    guard = GuardRules(host_policy(args, host), max_body=UI_MAX_BODY, max_upload=max_upload + (1 << 20),
                       login_paths=("/login",))
    try:
        app.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=args.port, share=share, auth=auth, show_error=True,
            allowed_paths=[os.path.join(paths.user_data, "exports")], max_file_size=max_upload, css=APP_CSS,
            app_kwargs={"middleware": [Middleware(RequestGuard, rules=guard, reply=json_reply, throttle=throttle)]},
            prevent_thread_lock=True,
        )
        # An open browser tab keeps a stream open, and uvicorn waits for open connections without
        # limit (Gradio gives up after 5 s): Ctrl+C took 5.6 s with one tab open.
        app.server.config.timeout_graceful_shutdown = UI_SHUTDOWN_GRACE_S
        app.block_thread()
    finally:
        models.close()
        second.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
