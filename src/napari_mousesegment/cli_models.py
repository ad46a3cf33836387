"""``mousesegment models``: list, import, export and remove named models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _size(n: int) -> str:
    return "-" if n == 0 else f"{n / 1e6:.1f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .models.registry import home, list_models

    rows = list_models()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    header = ("name", "kind", "organs", "version", "source", "size")
    table = [header] + [(r.name, r.kind, ",".join(r.organs), r.version, r.source, _size(r.size_bytes)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"(user models: {home()})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .models.registry import import_model

    folder = import_model(args.source, args.name, args.force, args.sha256)
    print(f"imported {args.source} as {folder.name} -> {folder}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .models.registry import export_model

    folder = export_model(args.name, args.dest, args.force)
    print(f"exported {args.name} -> {folder}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from .models.registry import remove_model

    print(f"removed {remove_model(args.name)}")
    return 0


def add_commands(sub):
    """Add `models ...`; returns its sub-parsers so that others can add actions (versions)."""
    models = sub.add_parser("models", help="list, import, export and remove named models")
    models_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = models_sub.add_parser("list", help="built-in, user and published models")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_cmd_list)
    imp = models_sub.add_parser("import", help="install a model folder, or a zip of one at a URL, by name")
    imp.add_argument("source", help="model folder, or URL of a zip of one")
    imp.add_argument("--name", default=None, help="name to install it as (default: the folder's name)")
    imp.add_argument("--force", action="store_true", help="replace a user model of the same name")
    imp.add_argument("--sha256", default=None, help="URL only: the zip's sha256, checked after download")
    imp.set_defaults(func=_cmd_import)
    exp = models_sub.add_parser("export", help="copy a model to a folder, to share or archive it")
    exp.add_argument("name", help="model name (or folder)")
    exp.add_argument("dest", type=Path, help="folder to write (absent or empty)")
    exp.add_argument("--force", action="store_true", help="replace an existing model folder at DEST")
    exp.set_defaults(func=_cmd_export)
    rm = models_sub.add_parser("remove", help="delete a user model")
    rm.add_argument("name")
    rm.set_defaults(func=_cmd_remove)
    return models_sub
