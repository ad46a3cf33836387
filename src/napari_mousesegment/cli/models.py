"""``mousesegment models``: list, import, export and remove named models; their versions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import options, remote


def _size(n: int) -> str:
    return "-" if n == 0 else f"{n / 1e6:.1f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..store.registry import home, list_models

    if remote.is_remote(args):
        with remote.client(args) as server:
            rows, where = server.models(), f"(models on {server.url})"
    else:
        with options.warnings_to_stderr():  # a broken registry.json or config.json: one line each
            rows = [asdict(r) for r in list_models()]
        where = f"(user models: {home()})"
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "kind", "organs", "version", "source", "size")
    table = [header] + [(r["name"], r["kind"], ",".join(r["organs"]), r["version"], r["source"],
                         _size(r["size_bytes"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(where)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ..store.transfer import import_model

    folder = import_model(args.source, args.name, args.force, args.sha256, args.organ)
    print(f"imported {args.source} as {folder.name} -> {folder}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "bioimageio":
        from ..jobs.bioimageio import export_bioimageio

        written = export_bioimageio(args.name, args.dest, args.force)
    else:
        from ..store.transfer import export_model

        written = [export_model(args.name, args.dest, args.force)]
    for path in written:
        print(f"exported {args.name} -> {path}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from ..store.transfer import remove_model

    print(f"removed {remove_model(args.name)}")
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    from ..store.versions import versions

    if remote.is_remote(args):
        with remote.client(args) as server:
            rows = server.versions(args.name)
    else:
        rows = versions(args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{args.name}: no versions (no retraining round has published one)")
    for r in rows:
        m = r.get("metrics") or {}
        score = f"held-out Dice {m['dice_before']:.3f} -> {m['dice_after']:.3f}" if m.get("dice_after") is not None else ""
        print(f"{'*' if r['current'] else ' '} v{r['version']:<4} {r['created']}  parent {r['parent']}  "
              f"items {r['items']}  {score}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from ..store.versions import promote

    if remote.is_remote(args):
        with remote.client(args) as server:
            done = server.promote(args.name, args.version)
        print(f"{done['name']}: version {done['version']} is current on {server.url} (promoted by {done['by']})")
        return 0
    print(f"{args.name}: version {args.version} is current ({promote(args.name, args.version)})")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from ..store.versions import rollback

    if remote.is_remote(args):
        with remote.client(args) as server:
            done = server.rollback(args.name)
        print(f"{done['name']}: rolled back to version {done['version']} on {server.url} (by {done['by']})")
        return 0
    print(f"{args.name}: rolled back to version {rollback(args.name)}")
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    with remote.client(args) as server:
        folder, version = server.pull(args.name)
    print(f"{args.name}: version {version} from {server.url} installed -> {folder} (sha256 checked)")
    return 0


def add_commands(sub) -> None:
    """``models list|import|export|remove|versions|promote|rollback``."""
    models = sub.add_parser("models", help="list, import, export and remove named models")
    models_sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = models_sub.add_parser("list", help="built-in, user and published models")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    remote.add_server_options(ls)
    ls.set_defaults(func=_cmd_list)
    imp = models_sub.add_parser("import", help="install a model folder, a zip of one, or a bioimage.io package")
    imp.add_argument("source", help="model folder, zip (a model folder or a bioimage.io package), or URL of a zip")
    imp.add_argument("--name", default=None, help="name to install it as (default: the folder's name)")
    imp.add_argument("--force", action="store_true", help="replace a user model of the same name")
    imp.add_argument("--sha256", default=None, help="URL only: the zip's sha256, checked after download")
    imp.add_argument("--organ", default=None,
                     help="another lab's bioimage.io package: the organ it segments (default: from its name and tags)")
    imp.set_defaults(func=_cmd_import)
    exp = models_sub.add_parser("export", help="copy a model to a folder, or package it for bioimage.io")
    exp.add_argument("name", help="model name (or folder)")
    exp.add_argument("dest", type=Path, help="store: the model folder to write (absent or empty); "
                                             "bioimageio: the folder to write the zips into")
    exp.add_argument("--format", choices=("store", "bioimageio"), default="store",
                     help="store: this plugin's folder (default); bioimageio: BioImage Model Zoo zips "
                          "(deepImageJ, ilastik, bioimageio.core), one per U-Net or per MOSnet condition")
    exp.add_argument("--force", action="store_true", help="replace an existing model folder or zip at DEST")
    exp.set_defaults(func=_cmd_export)
    rm = models_sub.add_parser("remove", help="delete a user model")
    rm.add_argument("name")
    rm.set_defaults(func=_cmd_remove)
    ver = models_sub.add_parser("versions", help="the versions of a retrained model")
    ver.add_argument("name")
    ver.add_argument("--json", action="store_true")
    remote.add_server_options(ver)
    ver.set_defaults(func=_cmd_versions)
    pro = models_sub.add_parser("promote", help="make a version the current one (on a server: maintainers)")
    pro.add_argument("name")
    pro.add_argument("version")
    remote.add_server_options(pro)
    pro.set_defaults(func=_cmd_promote)
    rb = models_sub.add_parser("rollback", help="return to the version that was current before "
                                                "(on a server: maintainers)")
    rb.add_argument("name")
    remote.add_server_options(rb)
    rb.set_defaults(func=_cmd_rollback)
    pull = models_sub.add_parser("pull", help="install a lab server's current version of a model here, "
                                              "its sha256 checked")
    pull.add_argument("name", help="the model's name on the server (installed here under the same name)")
    remote.add_server_options(pull, required=True)
    pull.set_defaults(func=_cmd_pull)
