"""``mousesegment serve`` and ``mousesegment users``: the lab server and who may use it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import options

EXTRA = "pip install 'napari-mousesegment[server]'"


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    options.check_round_epochs(args.epochs)
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    try:
        import python_multipart  # noqa: F401  (FastAPI parses uploads with it)
        import uvicorn

        from ..server.app import create_app
    except ImportError as exc:
        raise ValueError(f"the server needs {exc.name}: {EXTRA}") from None
    os.environ.setdefault("MOUSESEGMENT_HOME", str(args.queue.resolve() / "home"))  # the worker child inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.queue, max_upload_mb=args.max_upload_mb, device=args.device, worker=args.worker,
                     epochs=args.epochs)
    scheme = "https" if args.tls_cert else "http"
    print(f"serving queue {args.queue.resolve()} on {scheme}://{args.host}:{args.port} "
          f"(models in {os.environ['MOUSESEGMENT_HOME']}; worker {'on' if args.worker else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                log_level="info")
    return 0


def _cmd_users_add(args: argparse.Namespace) -> int:
    from ..server.users import Users

    token = Users(args.queue).add(args.name, args.role)
    print(f"user {args.name} ({args.role}) added. Its token, shown only this once (the server keeps a hash); "
          "give it to the user, who keeps it in a file for --token-file or in MOUSESEGMENT_TOKEN:")
    print(token)
    return 0


def _cmd_users_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..server.users import Users

    rows = Users(args.queue).list()
    if args.json:
        print(json.dumps([asdict(u) for u in rows], indent=2))
        return 0
    for u in rows:
        print(f"{u.name:<20} {u.role:<11} created {u.created}" + (f"  revoked {u.revoked}" if u.revoked else ""))
    if not rows:
        print(f"no users yet: mousesegment users add NAME --role annotator --queue {args.queue}")
    return 0


def _cmd_users_revoke(args: argparse.Namespace) -> int:
    from ..server.users import Users

    Users(args.queue).revoke(args.name)
    print(f"revoked {args.name}: its token is refused from now on, also by a running server")
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_commands(sub) -> None:
    """``serve`` and ``users add|list|revoke``."""
    serve = sub.add_parser(
        "serve", help="the lab server: the queue, the models and the retraining worker over HTTP",
        description="Serve the queue folder DIR to napari and the CLI (--server URL). The server's models and "
                    "their versions live in $MOUSESEGMENT_HOME, or DIR/home when that is not set. "
                    f"Needs the server extra: {EXTRA}")
    serve.add_argument("--queue", type=Path, required=True, metavar="DIR",
                       help="the queue folder (on this machine's own disk); users.sqlite lives there too")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1; 0.0.0.0 for the lab network, with TLS or behind a proxy)")
    serve.add_argument("--port", type=int, default=8765, help="port (8765)")
    options.add_device(serve)
    serve.add_argument("--max-upload-mb", type=_positive, default=512.0,
                       help="largest upload accepted, in MB; larger ones get 413 (512)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="TLS certificate (PEM), with --tls-key")
    serve.add_argument("--tls-key", type=Path, default=None, help="TLS private key (PEM), with --tls-cert")
    serve.add_argument("--worker", action=argparse.BooleanOptionalAction, default=True,
                       help="run the retraining worker as a child process, restarted if it dies (default: on)")
    serve.add_argument("--epochs", type=int, default=40,
                       help="fine-tuning epochs per round of that worker, as `worker --epochs` (40)")
    serve.set_defaults(func=_cmd_serve)

    users = sub.add_parser("users", help="who may use the lab server: tokens and roles")
    usub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = usub.add_parser("add", help="add a user; prints its token once, alone on the last line")
    add.add_argument("name")
    add.add_argument("--role", choices=("annotator", "maintainer"), required=True,
                     help="annotator: send corrections and read; maintainer: also promote, roll back, "
                          "remove items and start rounds")
    ls = usub.add_parser("list", help="users, roles, and when they were added or revoked (never tokens)")
    ls.add_argument("--json", action="store_true")
    rv = usub.add_parser("revoke", help="refuse a user's token from now on")
    rv.add_argument("name")
    for parser, func in ((add, _cmd_users_add), (ls, _cmd_users_list), (rv, _cmd_users_revoke)):
        parser.add_argument("--queue", type=Path, required=True, metavar="DIR", help="the server's queue folder")
        parser.set_defaults(func=func)
