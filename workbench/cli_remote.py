"""`python -m workbench remote add|remove`: entries in models/ for models served by another server.

A remote entry (see backends/remote_backend.py) is listed and loaded like a local model. The
API key is read from stdin (never a command-line argument, which other users can see in the
process list) and saved in user_data/remote_keys/ with mode 0600, or named by an environment
variable.
"""

from __future__ import annotations

import os
import sys

from .errors import WorkbenchError


def cmd_remote_add(args, paths) -> int:
    from .backends.remote_backend import save_entry

    key = None
    if args.api_key_stdin:
        if sys.stdin.isatty():
            import getpass

            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.readline()
        key = key.strip()
        if not key:
            raise WorkbenchError("--api-key-stdin read an empty key; pipe the key in or type it.")
    path = save_entry(paths.models, args.name, args.base_url, args.model, api_key_env=args.api_key_env, api_key=key,
                      context_length=args.context, timeout_s=args.timeout, strict_openai=args.strict_openai,
                      replace_existing=args.replace)
    where = "saved in user_data/remote_keys/ (0600)" if key else (
        f"read from ${args.api_key_env}" if args.api_key_env else "none")
    print(f"Added models/{os.path.basename(path)}: {args.model} on {args.base_url} (key: {where}). "
          f"Load it like a local model: python -m workbench generate {os.path.basename(path)} -p 'Hello' --chat")
    return 0


def cmd_remote_remove(args, paths) -> int:
    from .backends.remote_backend import SUFFIX, key_path, read_entry
    from .paths import resolve_entry

    name = args.name if args.name.endswith(SUFFIX) else args.name + SUFFIX
    path = resolve_entry(paths.models, name, "remote entry")
    read_entry(path)  # only a remote entry is removed here
    os.remove(path)
    if os.path.exists(key_path(path)):
        os.remove(key_path(path))
    print(f"Removed models/{name} and its saved key, if any.")
    return 0


def add_remote_command(sub) -> None:
    r = sub.add_parser("remote", help="add or remove a model served by an OpenAI-compatible server")
    rs = r.add_subparsers(dest="remote_command", required=True)
    a = rs.add_parser("add", help="add models/NAME.remote.json pointing at a server's model")
    a.add_argument("name", help="entry name (letters, digits, . _ -)")
    a.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://host:8000/v1")
    a.add_argument("--model", required=True, help="the model name the server serves (its GET /v1/models ids)")
    key = a.add_mutually_exclusive_group()
    key.add_argument("--api-key-env", metavar="VAR", help="read the key from this environment variable at load")
    key.add_argument("--api-key-stdin", action="store_true",
                     help="read the key from stdin and save it in user_data/remote_keys/ (mode 0600)")
    a.add_argument("--context", type=int, help="the server's context in tokens (default 8192)")
    a.add_argument("--timeout", type=float, help="seconds to wait for the server's next words (default 120)")
    a.add_argument("--strict-openai", action="store_true",
                   help="send only OpenAI's own sampling parameters (no top_k, min_p, repetition_penalty)")
    a.add_argument("--replace", action="store_true", help="replace an entry of the same name")
    a.set_defaults(func=cmd_remote_add)
    d = rs.add_parser("remove", help="remove a remote entry and its saved key")
    d.add_argument("name")
    d.set_defaults(func=cmd_remote_remove)
