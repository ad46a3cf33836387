"""``mousesegment queue ...`` and ``mousesegment worker``: the active-learning loop from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import options, remote


def _check_model(args: argparse.Namespace) -> str:
    """The version of the model whose prediction was corrected; an unknown or unfit model, or an
    organ or condition it does not know, is refused before anything is written."""
    from ..store.registry import model_config

    meta = model_config(args.model)
    wanted = {"ct": "mosnet", "ultrasound": "unet"}[args.kind]
    if meta.get("kind") != wanted:
        raise ValueError(f"--model {args.model} is a {meta.get('kind')} model; {args.kind} corrections "
                         f"need a {wanted} model")
    if args.kind == "ultrasound" and meta.get("organ") not in (None, args.organ):
        raise ValueError(f"--organ {args.organ}: --model {args.model} segments {meta.get('organ')!r}, "
                         f"not {args.organ!r}")
    if args.kind == "ct" and args.condition not in meta.get("conditions", [args.condition]):
        raise ValueError(f"--condition {args.condition}: --model {args.model} knows conditions "
                         f"{meta.get('conditions')}, not {args.condition!r}")
    return str(meta.get("version", ""))


def _check_names(args: argparse.Namespace) -> None:
    """``--organ`` / ``--condition`` as a name; without ``--model``, an organ one letter off a
    known organ (``kidneyz``) is refused as the typo it most likely is."""
    import difflib

    from ..active.queue import QueueError, check_fields
    from ..organs import CT_ORGANS, US_ORGANS

    try:
        check_fields(args.kind, args.organ, args.condition, None if args.kind == "ultrasound" else (1.0, 1.0, 1.0))
    except QueueError as exc:
        raise ValueError(str(exc)) from None
    if args.organ is not None and not args.model:
        known = sorted({*US_ORGANS, *CT_ORGANS})
        close = difflib.get_close_matches(args.organ.lower(), known, n=1, cutoff=0.8)
        if close and close[0] != args.organ:
            raise ValueError(f"--organ {args.organ}: not a known organ; did you mean {close[0]!r}? "
                             f"(known: {', '.join(known)}; any other name is taken as a new structure)")


def _check_model_labels(args: argparse.Namespace, labels) -> None:
    """Micro-CT labels are the model's organ ids 1..N (0: background): anything else would be trained
    on as an organ the model does not have."""
    import numpy as np

    from ..store.registry import model_config

    if args.kind != "ct" or not args.model or not np.size(labels):
        return
    organs = model_config(args.model).get("organs") or []
    top = int(np.max(labels))
    if organs and top > len(organs):
        raise ValueError(f"{args.labels}: label {top} is not an organ of --model {args.model} "
                         f"(ids 1..{len(organs)}: {', '.join(map(str, organs))})")


def _check_contents(args: argparse.Namespace, image, labels, prediction) -> None:
    """What the files hold, checked with the file named (``Queue.add`` checks it too, but knows
    arrays, not files): a damaged or wrong file is one clear line on the command line."""
    import numpy as np

    from ..active.queue import QueueError, check_labels

    if np.ndim(image) != 3 or np.size(image) == 0:
        raise ValueError(f"{args.image}: expected a (frames or slices, y, x) stack, got shape {np.shape(image)}")
    if np.shape(labels) != np.shape(image):
        raise ValueError(f"{args.labels}: shape {np.shape(labels)} does not match the image's {np.shape(image)}")
    try:
        check_labels(np.asarray(labels), args.kind, str(args.labels))
    except QueueError as exc:
        raise ValueError(str(exc)) from None
    if np.issubdtype(np.asarray(image).dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"{args.image}: the image contains NaN or infinite values")
    if prediction is not None and np.shape(prediction) != np.shape(labels):
        raise ValueError(f"{args.prediction}: shape {np.shape(prediction)} differs from the labels' {np.shape(labels)}")
    if not np.any(labels):
        raise ValueError(f"{args.labels}: no labels at all: nothing to learn")
    _check_model_labels(args, labels)


def _is_roiset(path) -> bool:
    return Path(path).suffix.lower() in (".zip", ".roi")


def _read_2d_or_stack(path: Path):
    """A TIFF as it is, or any other image (PNG, JPEG) with colour turned grey."""
    import numpy as np

    from ..io.composites import to_gray
    from ..io.files import regular_file
    from ..io.readers import TIFF_SUFFIXES, suffix
    from ..io.tiff import read_array

    if suffix(path) in TIFF_SUFFIXES:
        image = read_array(path)
    else:
        import imageio.v3 as iio

        from ..io.roi import brief

        regular_file(path, "image file")
        try:
            image = iio.imread(path)
        except Exception as exc:  # imageio and Pillow raise many types for damaged files
            raise ValueError(f"{path}: cannot read image ({brief(exc)})") from exc
        if image.ndim == 3 and image.shape[-1] == 2:  # grey + alpha
            image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = to_gray(image)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"{path}: not a frame, a stack of frames or a montage (shape {np.shape(image)})")
    return image


def _ultrasound_frames(args: argparse.Namespace, labels_plane: tuple | None) -> tuple:
    """The frames of ``--image`` as ``predict ultrasound`` reads them, and how they were read: a
    stack, a folder of frames, a montage (split on its grid, ``--grid`` or detected) or one 2D frame.

    A 2D image is one frame when 2D labels of its size come with it, or when it shows no grid of
    gutters; ``--grid`` always splits it.
    """
    import warnings

    from ..io.composites import CompositeError, read_composite, split_montage

    path = Path(args.image)
    with warnings.catch_warnings():  # "N frames, not the usual 35": any count is a fine correction
        warnings.simplefilter("ignore")
        if path.is_dir():
            frames = read_composite(path, args.grid).frames
            return frames, f"{len(frames)} frames of a folder"
        image = _read_2d_or_stack(path)
        if image.ndim == 3:
            if args.grid is not None:
                raise ValueError(f"--grid: {path} is already a stack of {len(image)} frames, not a montage")
            return image, f"a stack of {len(image)} frame(s)"
        if args.grid is None and labels_plane == tuple(image.shape):
            return image[None], "one frame"
        try:
            frames, (rows, cols) = split_montage(image, args.grid)
        except CompositeError as exc:
            if args.grid is not None:
                raise ValueError(f"{path}: {exc}") from None
            return image[None], "one frame"
    return frames, f"a {rows}x{cols} montage"


def _read_us_labels(path: Path, shape: tuple, labels=None):
    """Ultrasound labels (or a prediction): an instance-label TIFF (``labels``: its array, when
    already read), or a RoiSet zip / .roi file filled on the image's frames (ROIs without a frame
    go on frame 1 of a single frame)."""
    import numpy as np

    from ..io.roi import read_rois, rois_to_labels
    from ..io.tiff import read_array
    from .options import warnings_to_stderr

    if _is_roiset(path):
        with warnings_to_stderr():
            return rois_to_labels(read_rois(path), shape, source=str(path))
    labels = read_array(path) if labels is None else labels
    if labels.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        labels = labels[None]
    return np.asarray(labels)


def _read_ultrasound(args: argparse.Namespace) -> tuple:
    """Image, labels and prediction of an ultrasound correction, and how the image was read."""
    from ..io.tiff import read_array

    labels = None if _is_roiset(args.labels) else read_array(args.labels)
    frames, how = _ultrasound_frames(args, tuple(labels.shape) if labels is not None and labels.ndim == 2 else None)
    if how == "one frame" and labels is not None and labels.ndim == 3 and len(labels) > 1:
        raise ValueError(f"{args.image}: read as one 2D frame of {frames.shape[1:]}, but {args.labels} holds "
                         f"{len(labels)} frames (a damaged stack? a montage: give --grid RxC)")
    labels = _read_us_labels(args.labels, frames.shape, labels)
    prediction = _read_us_labels(args.prediction, frames.shape) if args.prediction else None
    return frames, labels, prediction, how


def read_correction(args: argparse.Namespace) -> tuple:
    """The image, labels, prediction and (micro-CT) voxel size that ``queue add`` was given, read
    and checked the same way for a local queue and for a lab server."""
    import numpy as np

    from ..io.hu import hu_map
    from ..io.readers import TIFF_SUFFIXES, check_spacing, read_label_map, read_scan, suffix
    from ..io.scan import Scan
    from ..io.tiff import read_array, read_tiff

    _check_names(args)
    spacing = None
    if args.kind == "ultrasound":
        if getattr(args, "spacing", None) is not None or getattr(args, "hu", None) is not None:
            raise ValueError("--spacing and --hu are for micro-CT corrections (--kind ct)")
        image, labels, prediction, args.read_as = _read_ultrasound(args)
        _check_contents(args, image, labels, prediction)
        return image, labels, prediction, spacing
    if getattr(args, "grid", None) is not None:
        raise ValueError("--grid is for ultrasound montages (--kind ultrasound)")
    if suffix(args.image) not in TIFF_SUFFIXES:  # any scan format predict ct reads
        scan = read_scan(args.image, args.spacing, hu=args.hu, series=args.series)
        image, spacing = np.asarray(scan.image), scan.spacing
        labels = read_label_map(args.labels, scan)[0]
    else:
        image = read_array(args.image)
        labels = read_array(args.labels) if suffix(args.labels) in TIFF_SUFFIXES else None
        spacing = args.spacing or read_tiff(args.image)[1]
        if spacing is None:
            raise ValueError(f"{args.image}: the file has no voxel size; give --spacing Z,Y,X in mm")
        spacing = check_spacing(spacing, str(args.image))
        if args.hu is not None:
            image = hu_map(image, args.hu, str(args.image)).apply(image)
        if labels is None:  # e.g. the labels.nii.gz predict ct wrote for a TIFF scan's own grid
            labels = read_label_map(args.labels, Scan(image, spacing))[0]
    prediction = read_array(args.prediction) if args.prediction else None
    args.read_as = "a scan"
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
          f"{len(item.touched)} corrected frame(s)/slice(s) of {args.read_as}")
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

    return [item.as_json() for item in Queue(args.queue, create=False).items()]


def _cmd_list(args: argparse.Namespace) -> int:
    items = _items(args)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for i in items:  # whatever a record holds (an organ of "" or None, a list edited by hand), one line each
        used = f" used in {', '.join(map(str, i.get('used_in') or []))}" if i.get("used_in") else ""
        by = f" by {i['author']}" if i.get("author") else ""
        why = f"  ({i['reason']})" if i.get("state") == "failed" and i.get("reason") else ""
        name = str(i.get("organ") or i.get("condition") or "-")
        print(f"{i.get('id', '?')!s:>5}  {i.get('state')!s:<8} {i.get('kind')!s:<10} {name:<10} "
              f"model {i.get('model') or '-'}  {len(i.get('touched') or [])} touched{used}{by}  "
              f"{i.get('created') or ''}{why}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if remote.is_remote(args):
        with remote.client(args) as server:
            status = server.status()
    else:
        from ..active.queue import Queue

        status = Queue(args.queue, create=False).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['items']} items: {status['pending']} pending, {status['used']} used, "
          f"{status.get('failed', 0)} failed")
    for failed in status.get("failed_items", []):
        print(f"  item {failed['id']} failed: {failed['reason'] or 'no reason recorded'} "
              f"(`mousesegment queue retry {failed['id']}` once fixed)")
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

    Queue(args.queue, create=False).remove(args.id)
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

    print(f"dataset -> {export_dataset(Queue(args.queue, create=False), args.out)}")
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    """``queue repair``: rebuild the manifest from the item folders; says what it did."""
    from ..active.repair import repair_queue

    for line in repair_queue(args.queue).lines():
        print(line)
    return 0


def _cmd_retry(args: argparse.Namespace) -> int:
    """``queue retry ID...``: failed items back to pending (after the cause was fixed)."""
    from ..active.queue import Queue

    queue = Queue(args.queue, create=False)
    held = {item.id: item.state for item in queue.items()}
    unknown = [i for i in args.ids if i not in held]
    if unknown:
        raise ValueError(f"{args.queue}: no item {', '.join(map(str, unknown))}")
    done = queue.retry(args.ids)
    for item_id in args.ids:
        print(f"item {item_id}: " + ("pending again" if item_id in done else f"{held[item_id]}, not failed: left as it is"))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    """One pass (``--once``: its errors end the command) or a loop that outlives any failed pass."""
    import time

    from ..active.worker import poll
    from ..training.finetune import FineTuneSettings

    options.check_round_epochs(args.epochs)
    for option, value, fits, wanted in (
            ("--lr", args.lr, 0 < args.lr < 1, "between 0 and 1"),
            ("--guard", args.guard, 0 <= args.guard <= 1, "0 to 1 (a Dice difference)"),
            ("--poll", args.poll, 0 <= args.poll <= 86_400, "0 to 86400 seconds"),
            ("--max-minutes", args.max_minutes, args.max_minutes is None or args.max_minutes > 0, "positive")):
        if not fits:  # NaN fails every comparison: refused too
            raise ValueError(f"{option}: {value} is not {wanted}")
    settings = FineTuneSettings(epochs=args.epochs, lr=args.lr)
    start = time.monotonic()
    stop = (lambda: time.monotonic() - start > args.max_minutes * 60) if args.max_minutes else (lambda: False)
    poll(args.queue, poll_s=args.poll, once=args.once, should_stop=stop,
         log=lambda line: print(line, flush=True),
         warn=lambda line: print(f"mousesegment worker: {line}", file=sys.stderr, flush=True),
         on_result=lambda result: print(result.summary(), flush=True),
         device=args.device, guard=args.guard, replay=args.replay, settings=settings)
    return 0


def item_id(text: str) -> int:
    """An item id option: a whole number from 1 to 2**63 - 1 (SQLite's largest id)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"an item id is a whole number of at least 1, got {text!r:.40}")
    return value


def add_commands(sub) -> None:
    """``queue add|list|status|remove|flush|export|repair|retry`` and ``worker``."""
    queue = sub.add_parser("queue", help="the active-learning queue of corrections")
    qsub = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = qsub.add_parser("add", help="queue a corrected labels stack with its image")
    remote.add_target(add)
    add.add_argument("--image", type=Path, required=True,
                     help="ultrasound: what `predict ultrasound` reads (a stack TIFF, one 2D frame, a montage "
                          "image or a folder of frames); ct: a TIFF stack or any scan `predict ct` reads")
    add.add_argument("--labels", type=Path, required=True,
                     help="the corrected labels on the image's frames: an instance-label TIFF, or (ultrasound) a "
                          "RoiSet zip or .roi file; for ct scans a TIFF or e.g. the labels.nii.gz predict wrote")
    add.add_argument("--kind", choices=["ct", "ultrasound"], required=True)
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--organ", help="ultrasound: the organ the labels are of")
    who.add_argument("--condition", help="ct: native, contrast or another condition of the model")
    add.add_argument("--model", default=None, help="the model (name or folder) whose prediction was corrected")
    add.add_argument("--prediction", type=Path, default=None,
                     help="that prediction (a TIFF, or for ultrasound a RoiSet): touched frames are where they differ")
    add.add_argument("--grid", type=options.grid, default=None,
                     help="ultrasound: split a montage --image on this grid RxC (default: detect the gutters; "
                          "a 2D image without them is one frame)")
    options.add_scan_options(add)
    add.set_defaults(func=_cmd_add)
    for action, helptext, func in (("list", "every item", _cmd_list), ("status", "counts and the last round", _cmd_status)):
        p = qsub.add_parser(action, help=helptext)
        remote.add_target(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
    rm = qsub.add_parser("remove", help="delete one item (on a server: maintainers only)")
    remote.add_target(rm)
    rm.add_argument("id", type=item_id)
    rm.set_defaults(func=_cmd_remove)
    flush = qsub.add_parser("flush", help="send the corrections waiting in this machine's outbox to a lab server")
    remote.add_server_options(flush, required=True)
    flush.set_defaults(func=_cmd_flush)
    ex = qsub.add_parser("export", help="the corrections as a dataset folder for `train unet`")
    ex.add_argument("--queue", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.set_defaults(func=_cmd_export)
    repair = qsub.add_parser("repair", help="rebuild a missing or damaged queue.sqlite from the item folders")
    repair.add_argument("--queue", type=Path, required=True)
    repair.set_defaults(func=_cmd_repair)
    retry = qsub.add_parser("retry", help="put failed items back to pending (once the cause is fixed)")
    retry.add_argument("--queue", type=Path, required=True)
    retry.add_argument("ids", type=item_id, nargs="+", metavar="ID")
    retry.set_defaults(func=_cmd_retry)

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
