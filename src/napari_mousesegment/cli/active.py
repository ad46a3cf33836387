"""``mousesegment queue ...`` and ``mousesegment worker``: the active-learning loop from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import options, remote


def _check_model(args: argparse.Namespace) -> str:
    """The version of the model whose prediction was corrected; an unknown or unfit model is refused
    before anything is written."""
    from ..store.registry import model_config

    meta = model_config(args.model)
    wanted = {"ct": "mosnet", "ultrasound": "unet"}[args.kind]
    if meta.get("kind") != wanted:
        raise ValueError(f"--model {args.model} is a {meta.get('kind')} model; {args.kind} corrections "
                         f"need a {wanted} model")
    if args.kind == "ultrasound" and meta.get("organ") not in (None, args.organ):
        raise ValueError(f"--model {args.model} segments {meta.get('organ')!r}, not {args.organ!r}")
    if args.kind == "ct" and args.condition not in meta.get("conditions", [args.condition]):
        raise ValueError(f"--model {args.model} knows conditions {meta.get('conditions')}, not {args.condition!r}")
    return str(meta.get("version", ""))


def _check_contents(args: argparse.Namespace, image, labels, prediction) -> None:
    """What the files hold, checked with the file named (``Queue.add`` checks it too, but knows
    arrays, not files): a damaged or wrong file is one clear line on the command line."""
    import numpy as np

    if np.ndim(image) != 3 or np.size(image) == 0:
        raise ValueError(f"{args.image}: expected a (frames or slices, y, x) stack, got shape {np.shape(image)}")
    if np.shape(labels) != np.shape(image):
        raise ValueError(f"{args.labels}: shape {np.shape(labels)} does not match the image's {np.shape(image)}")
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise ValueError(f"{args.labels}: labels must be integers, got {np.asarray(labels).dtype}")
    if np.issubdtype(np.asarray(image).dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"{args.image}: the image contains NaN or infinite values")
    if prediction is not None and np.shape(prediction) != np.shape(labels):
        raise ValueError(f"{args.prediction}: shape {np.shape(prediction)} differs from the labels' {np.shape(labels)}")
    if not np.any(labels):
        raise ValueError(f"{args.labels}: no labels at all: nothing to learn")


def read_correction(args: argparse.Namespace) -> tuple:
    """The image, labels, prediction and (micro-CT) voxel size that ``queue add`` was given, read
    and checked the same way for a local queue and for a lab server."""
    import numpy as np

    from ..io.hu import hu_map
    from ..io.readers import TIFF_SUFFIXES, check_spacing, read_label_map, read_scan, suffix
    from ..io.scan import Scan
    from ..io.tiff import read_array, read_tiff

    spacing = None
    if args.kind == "ct" and suffix(args.image) not in TIFF_SUFFIXES:  # any scan format predict ct reads
        scan = read_scan(args.image, args.spacing, hu=args.hu, series=args.series)
        image, spacing = np.asarray(scan.image), scan.spacing
        labels = read_label_map(args.labels, scan)[0]
    else:
        image = read_array(args.image)
        labels = read_array(args.labels) if suffix(args.labels) in TIFF_SUFFIXES or args.kind != "ct" else None
        if args.kind == "ct":
            spacing = args.spacing or read_tiff(args.image)[1]
            if spacing is None:
                raise ValueError(f"{args.image}: the file has no voxel size; give --spacing Z,Y,X in mm")
            spacing = check_spacing(spacing, str(args.image))
            if args.hu is not None:
                image = hu_map(image, args.hu, str(args.image)).apply(image)
            if labels is None:  # e.g. the labels.nii.gz predict ct wrote for a TIFF scan's own grid
                labels = read_label_map(args.labels, Scan(image, spacing))[0]
    prediction = read_array(args.prediction) if args.prediction else None
    _check_contents(args, image, labels, prediction)
    return image, labels, prediction, spacing


def _server_model_version(args: argparse.Namespace) -> str | None:
    """The version of ``--model`` as this machine has it (what the prediction came from), checked
    like a local one; None for a model only the server has (the server checks it)."""
    from ..store.registry import list_models

    if not args.model:
        return None
    here = {m.name for m in list_models() if m.source != "registry"}  # never download one for this
    return _check_model(args) if args.model in here or Path(args.model).is_dir() else None


def _cmd_add(args: argparse.Namespace) -> int:
    if remote.is_remote(args):
        return _add_to_server(args)
    from ..active.queue import Queue

    model_version = _check_model(args) if args.model else None
    image, labels, prediction, spacing = read_correction(args)
    item = Queue(args.queue).add(image, labels, args.kind, organ=args.organ, condition=args.condition,
                                 model=args.model, model_version=model_version, prediction=prediction,
                                 source=str(args.labels), spacing=spacing)
    print(f"added item {item.id}: {item.kind} {item.organ or item.condition}, "
          f"{len(item.touched)} corrected frame(s)/slice(s)")
    return 0


def _add_to_server(args: argparse.Namespace) -> int:
    """``queue add --server``: into this machine's outbox, then to the server; 0 once it holds it."""
    from ..remote.client import ServerError, Unreachable
    from ..remote.outbox import REFUSE_STATUSES

    model_version = _server_model_version(args)
    image, labels, prediction, spacing = read_correction(args)
    with remote.client(args) as server:
        try:
            answer = server.add(image, labels, kind=args.kind, organ=args.organ, condition=args.condition,
                                model=args.model, model_version=model_version, prediction=prediction,
                                source=str(args.labels), spacing=spacing)
        except Unreachable as exc:
            print(f"mousesegment queue: {exc}; the correction is kept in this machine's outbox "
                  f"({server.outbox.count()} waiting): send it with `mousesegment queue flush --server "
                  f"{server.url}`", file=sys.stderr)
            return remote.UNREACHABLE_EXIT
        except ServerError as exc:
            where = (f"set aside in {server.outbox.folder / 'refused'}" if exc.status in REFUSE_STATUSES
                     else f"kept in this machine's outbox ({server.outbox.count()} waiting)")
            raise ServerError(exc.status, f"{exc.reason}; the correction is {where}") from None
    item = answer["item"]
    print(f"server {server.url} holds item {item['id']} ({'new' if answer['created'] else 'sent before: not added twice'}): "
          f"{item['kind']} {item['organ'] or item['condition']}, {len(item['touched'])} corrected frame(s)/slice(s)")
    return 0


def _items(args: argparse.Namespace) -> list[dict]:
    """The items of ``--queue`` or ``--server``, as ``queue list --json`` prints them."""
    if remote.is_remote(args):
        with remote.client(args) as server:
            return server.items()
    from ..active.queue import Queue

    return [item.as_json() for item in Queue(args.queue).items()]


def _cmd_list(args: argparse.Namespace) -> int:
    items = _items(args)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for i in items:
        used = f" used in {', '.join(i['used_in'])}" if i["used_in"] else ""
        by = f" by {i['author']}" if i.get("author") else ""
        print(f"{i['id']:>5}  {i['state']:<8} {i['kind']:<10} {i['organ'] or i['condition']:<10} "
              f"model {i['model'] or '-'}  {len(i['touched'])} touched{used}{by}  {i['created']}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if remote.is_remote(args):
        with remote.client(args) as server:
            status = server.status()
    else:
        from ..active.queue import Queue

        status = Queue(args.queue).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['items']} items: {status['pending']} pending, {status['used']} used")
    last = status["last_round"]
    if last:
        print(f"last round {last['id']}: {last['model']} {last['state']}"
              f"{' -> version ' + str(last['version']) if last['version'] else ''} {last['message'] or ''}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    if remote.is_remote(args):
        with remote.client(args) as server:
            server.remove(args.id)
        print(f"removed item {args.id} on {server.url}")
        return 0
    from ..active.queue import Queue

    Queue(args.queue).remove(args.id)
    print(f"removed item {args.id}")
    return 0


def _cmd_flush(args: argparse.Namespace) -> int:
    """``queue flush --server``: send what waits in this machine's outbox; 0 once nothing waits."""
    from ..remote.client import Unreachable

    failures: list[Exception] = []
    with remote.client(args) as server:
        sent, failed = server.flush(lambda digest, exc: failures.append(exc))
        waiting = server.outbox.count()
    for exc in failures:
        print(f"mousesegment queue: {exc}", file=sys.stderr)
    print(f"sent {sent}, failed {failed}, still waiting {waiting} (outbox {server.outbox.folder})")
    if waiting and any(isinstance(exc, Unreachable) for exc in failures):
        return remote.UNREACHABLE_EXIT
    return 2 if waiting or failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..active.export import export_dataset
    from ..active.queue import Queue

    print(f"dataset -> {export_dataset(Queue(args.queue), args.out)}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import time

    from ..active.worker import run_rounds
    from ..training.finetune import FineTuneSettings

    settings = FineTuneSettings(epochs=args.epochs, lr=args.lr)
    start = time.monotonic()
    stop = (lambda: time.monotonic() - start > args.max_minutes * 60) if args.max_minutes else (lambda: False)
    while True:
        for result in run_rounds(args.queue, device=args.device, guard=args.guard, replay=args.replay,
                                 settings=settings, should_stop=stop):
            print(result.summary())
        if args.once or stop():
            return 0
        time.sleep(args.poll)


def add_commands(sub) -> None:
    """``queue add|list|status|remove|export`` and ``worker``."""
    queue = sub.add_parser("queue", help="the active-learning queue of corrections")
    qsub = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = qsub.add_parser("add", help="queue a corrected labels stack with its image")
    remote.add_target(add)
    add.add_argument("--image", type=Path, required=True,
                     help="(frames or slices, y, x) TIFF; for ct also any scan `predict ct` reads")
    add.add_argument("--labels", type=Path, required=True,
                     help="the corrected labels, same shape (for ct scans: TIFF, or e.g. the labels.nii.gz predict wrote)")
    add.add_argument("--kind", choices=["ct", "ultrasound"], required=True)
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--organ", help="ultrasound: the organ the labels are of")
    who.add_argument("--condition", help="ct: native, contrast or another condition of the model")
    add.add_argument("--model", default=None, help="the model (name or folder) whose prediction was corrected")
    add.add_argument("--prediction", type=Path, default=None,
                     help="that prediction: touched frames are where they differ")
    options.add_scan_options(add)
    add.set_defaults(func=_cmd_add)
    for action, helptext, func in (("list", "every item", _cmd_list), ("status", "counts and the last round", _cmd_status)):
        p = qsub.add_parser(action, help=helptext)
        remote.add_target(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    rm = qsub.add_parser("remove", help="delete one item (on a server: maintainers only)")
    remote.add_target(rm)
    rm.add_argument("id", type=int)
    rm.set_defaults(func=_cmd_remove)
    flush = qsub.add_parser("flush", help="send the corrections waiting in this machine's outbox to a lab server")
    remote.add_server_options(flush, required=True)
    flush.set_defaults(func=_cmd_flush)
    ex = qsub.add_parser("export", help="the corrections as a dataset folder for `train unet`")
    ex.add_argument("--queue", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.set_defaults(func=_cmd_export)

    worker = sub.add_parser("worker", help="retrain on the queued corrections and publish model versions")
    worker.add_argument("--queue", type=Path, required=True)
    worker.add_argument("--once", action="store_true", help="one pass over the pending items, then exit")
    options.add_device(worker)
    worker.add_argument("--max-minutes", type=float, default=None, help="stop (cleanly) after this long")
    worker.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs per round (40)")
    worker.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (3e-4)")
    worker.add_argument("--guard", type=float, default=0.0,
                        help="promote when held-out Dice drops by at most this much (0: must not get worse)")
    worker.add_argument("--replay", default=None, metavar="DATASET",
                        help="the model's original dataset folder (ultrasound or micro-CT): replayed alongside "
                             "the corrections so the model does not forget")
    worker.add_argument("--poll", type=float, default=30.0, help="seconds between passes without --once (30)")
    worker.set_defaults(func=_cmd_worker)
