"""``--server URL [--token-file F]``: the options of every command that can talk to a lab server,
and the client they make (see :mod:`..remote.client`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..remote.client import Client

#: Exit status of a command that could not reach the server (its correction waits in the outbox).
UNREACHABLE_EXIT = 3
_SERVER_HELP = "a lab server (mousesegment serve), e.g. http://gpu-box:8765"


def _token_option(parser) -> None:
    parser.add_argument("--token-file", type=Path, default=None, metavar="F",
                        help="with --server: the file holding your token (default: $MOUSESEGMENT_TOKEN)")


def add_server_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--server URL`` and ``--token-file F`` for a command that works locally without them."""
    parser.add_argument("--server", metavar="URL", required=required, help=_SERVER_HELP)
    _token_option(parser)


def add_target(parser: argparse.ArgumentParser) -> None:
    """Exactly one of ``--queue DIR`` (a queue folder here) or ``--server URL`` (a lab server's queue)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--queue", type=Path, metavar="DIR", help="a queue folder on this machine")
    where.add_argument("--server", metavar="URL", help=_SERVER_HELP)
    _token_option(parser)


def is_remote(args: argparse.Namespace) -> bool:
    """Whether the command goes to ``--server`` (``--token-file`` alone is a mistake, said so)."""
    if getattr(args, "token_file", None) is not None and not args.server:
        raise ValueError("--token-file goes with --server URL")
    return bool(args.server)


def client(args: argparse.Namespace) -> Client:
    """The client of ``--server``, with the token of ``--token-file`` or ``$MOUSESEGMENT_TOKEN``."""
    from ..remote.client import Client, token_from

    return Client(args.server, token_from(args.token_file))
