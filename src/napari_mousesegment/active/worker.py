"""Retraining rounds: queued corrections -> fine-tuned model -> a new version, promoted if not worse.

One worker at a time per queue (an OS file lock, released even when the process is killed, on
every platform). A round marks its items used only after its version is published, so a killed
round leaves them pending and the next run does the whole round again; the store keeps serving
the last good version throughout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from ..metrics import dice
from ..models.folder import ModelError
from ..models.preprocess import pick_device
from ..store import versions
from ..store.load import load_model
from ..store.registry import model_config
from .queue import Item, Queue, QueueError
from .rounds import RoundResult, RoundState


@contextmanager
def worker_lock(root: Path) -> Iterator[None]:
    """Hold the queue's worker lock, or refuse at once if another worker has it.

    The holder's pid is kept beside the lock (``worker.pid``) to name it in the refusal.
    """
    root = Path(root)
    lock = FileLock(root / "worker.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            pid = (root / "worker.pid").read_text().strip()
        except OSError:
            pid = ""
        raise QueueError(f"{root}: another worker is running a round on this queue "
                         f"(pid {pid or '?'}); wait for it to finish") from None
    try:
        (root / "worker.pid").write_text(str(os.getpid()))
        yield
    finally:
        (root / "worker.pid").unlink(missing_ok=True)
        lock.release()


def split_frames(items: list[Item], every: int = 4) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(item, frame) pairs of the touched frames for training and for the held-out guard.

    Every ``every``-th touched frame (at least one, when there are two or more) is held out to
    check that a new version is not worse; the rest are trained on.
    """
    pairs = [(item.id, frame) for item in items for frame in item.touched]
    held = [p for k, p in enumerate(pairs) if k % every == every - 1]
    if not held and len(pairs) >= 2:
        held = [pairs[-1]]
    train = [p for p in pairs if p not in held]
    return train, held


def _gather(items: list[Item], pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    by_id = {item.id: item for item in items}
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    frames, masks = [], []
    for item_id, frame in pairs:
        if item_id not in cache:
            cache[item_id] = by_id[item_id].image(), by_id[item_id].labels()
        frames.append(cache[item_id][0][frame])
        masks.append(cache[item_id][1][frame])
    return np.stack(frames), np.stack(masks)


def pixel_dice(model, frames: np.ndarray, masks: np.ndarray) -> float:
    """Pixel Dice of the model's thresholded probability against ``masks`` over all frames."""
    from ..inference.ultrasound import predict_probabilities

    return dice(predict_probabilities(model, frames) > model.config.threshold, masks > 0)


def _replay(data: str | None, organ: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A random sample of ``n`` training frames of the original dataset, when one is given."""
    if not data:
        return None
    from ..data.us_dataset import load_us_items

    items = [i for i in load_us_items([data], organ) if i.split == "train"]
    if not items:
        return None
    frames = np.concatenate([i.frames for i in items])
    masks = np.concatenate([i.labels[organ] for i in items])
    pick = np.random.default_rng(seed).choice(len(frames), size=min(n, len(frames)), replace=False)
    return frames[pick], masks[pick]


def _round(queue: Queue, items: list[Item], model_spec: str, kind: str, prepare, *, device: str, guard: float,
           settings, log: Callable[[str], None], should_stop: Callable[[], bool]) -> RoundResult:
    """The round both modalities share: base version, fine-tune, score on held-out data, publish,
    promote when not worse, and only then mark the items used.

    ``prepare(model, config, items)`` returns ``(fine_tune(model, progress) -> tuned, score(model) -> Dice,
    n_train, n_held)``.
    """
    from ..training.finetune import FineTuneSettings

    name = versions.lab_name(model_spec)
    versions.ensure_base(name, model_spec)
    current = next(v["version"] for v in versions.versions(name) if v["current"])
    dev = pick_device(device)
    model, config, _ = load_model(name, dev, kind={"ultrasound": "unet", "ct": "mosnet"}[kind])
    settings = settings or FineTuneSettings()
    fine_tune, score, n_train, n_held = prepare(model, config, items, settings)
    round_id = queue.start_round(name, [i.id for i in items])
    log(f"round {round_id}: {name} (v{current}) on {n_train} corrected {'frames' if kind == 'ultrasound' else 'slices'}"
        f" of {len(items)} item(s), {n_held} held out; device {dev}")

    def report(event: dict) -> None:
        queue.update_round(round_id, epoch=event["epoch"], epochs=event["epochs"], loss=event["loss"],
                           eta_s=event["eta_s"])
        log(f"  epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.4f}, eta {event['eta_s']:.0f} s")

    try:
        tuned = fine_tune(model, report, should_stop)
        before = score(model) if n_held else float("nan")
        after = score(tuned) if n_held else float("nan")
        if np.isnan(before) or np.isnan(after):  # held-out data with nothing to score (no organ in it)
            n_held, before, after = 0, None, None
        result = RoundResult(name, held_out=n_held, dice_before=before, dice_after=after, trained_on=n_train)
        version = versions.publish(name, tuned, config, current, [i.id for i in items], result.metrics())
        promoted = bool(n_held) and after >= before - guard  # nothing to check it on: never promoted blind
        if promoted:
            versions.promote(name, version)
        queue.mark_used([i.id for i in items], f"{name}:v{version}")
        verdict = ("promoted" if promoted else "kept, not promoted ("
                   + ("worse on the held-out data)" if n_held else "nothing held out to check it on)"))
        queue.update_round(round_id, state=RoundState.DONE, version=version,
                           metrics={**result.metrics(), "promoted": promoted}, message=verdict)
        log(f"round {round_id}: held-out Dice {_fmt(before)} -> {_fmt(after)}; version {version} {verdict}")
        return replace(result, version=version, promoted=promoted)
    except BaseException as exc:
        queue.update_round(round_id, message=str(exc),
                           state=RoundState.CANCELLED if isinstance(exc, InterruptedError) else RoundState.FAILED)
        raise


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ultrasound_round(queue: Queue, items: list[Item], model_spec: str, *, device: str = "auto",
                     guard: float = 0.0, replay: str | None = None, settings=None,
                     log: Callable[[str], None] = print,
                     should_stop: Callable[[], bool] = lambda: False) -> RoundResult:
    """Fine-tune one organ's U-Net on its queued corrections and publish the result as a version."""
    from ..training.finetune import fine_tune_unet

    organ = items[0].organ

    def prepare(model, config, items, settings):
        train_pairs, held_pairs = split_frames(items)
        if not train_pairs:
            raise QueueError(f"{organ}: the corrections touch no frame to train on")
        frames, masks = _gather(items, train_pairs)
        held_f, held_m = _gather(items, held_pairs) if held_pairs else (frames[:0], masks[:0])
        old = _replay(replay, organ, len(frames), settings.seed)
        return (lambda m, report, stop: fine_tune_unet(m, frames, masks, settings, old, report, stop),
                lambda m: pixel_dice(m, held_f, held_m), len(train_pairs), len(held_pairs))

    return _round(queue, items, model_spec, "ultrasound", prepare, device=device, guard=guard,
                  settings=settings, log=log, should_stop=should_stop)


def ct_round(queue: Queue, items: list[Item], model_spec: str, *, device: str = "auto", guard: float = 0.0,
             replay: str | None = None, settings=None, log: Callable[[str], None] = print,
             should_stop: Callable[[], bool] = lambda: False) -> RoundResult:
    """Fine-tune a MOSnet on the corrected slices of one condition and publish the result as a version."""
    import torch

    from ..training.finetune import ct_dice, fine_tune_mosnet
    from ..training.slices import corrected_slices

    condition = items[0].condition

    def prepare(model, config, items, settings):
        if condition not in config.conditions:
            raise QueueError(f"model {model_spec} knows conditions {config.conditions}, not {condition!r}")
        train, held = [], []
        for item in items:  # every 4th touched slice of each item is held out, as for frames
            hold = item.touched[3::4] or (item.touched[-1:] if len(item.touched) >= 2 else [])
            keep = [k for k in item.touched if k not in hold]
            image, labels = item.image(), item.labels()
            train.append(corrected_slices(image, labels, item.spacing, keep, config))
            if hold:
                held.append(corrected_slices(image, labels, item.spacing, hold, config))
        images, masks = (torch.cat(t) for t in zip(*train))
        held_i, held_m = (torch.cat(t) for t in zip(*held)) if held else (images[:0], masks[:0])
        beta = torch.tensor(read_beta(model_spec, len(config.organs)))
        code = config.conditions.index(condition)
        n = len(images)
        annotated = torch.ones((n, len(config.organs)), dtype=torch.bool)
        conditions = torch.full((n,), code)
        old = _ct_replay(replay, config, n, settings.seed)
        if old is not None:  # as many original slices as corrected ones, each with its dataset's α
            log(f"replaying {len(old.images)} slices of {replay}")
            images, masks = torch.cat([images, old.images.float()]), torch.cat([masks, old.organ_masks])
            annotated, conditions = torch.cat([annotated, old.annotated]), torch.cat([conditions, old.condition])
        return (lambda m, report, stop: fine_tune_mosnet(m, images, masks, annotated, conditions, beta, settings,
                                                          report, stop),
                lambda m: ct_dice(m, held_i, held_m, code), n, len(held_i))

    return _round(queue, items, model_spec, "ct", prepare, device=device, guard=guard, settings=settings,
                  log=log, should_stop=should_stop)


def _ct_replay(data: str | None, config, n: int, seed: int):
    """``n`` random slices of an original micro-CT dataset folder (the model's preprocessing), or None."""
    if not data:
        return None
    import torch

    from ..data.ct_dataset import read_ct_dataset
    from ..training.slices import build_slices

    dataset = read_ct_dataset(data)
    if dataset.condition not in config.conditions:
        return None
    slices = build_slices([dataset], config, stride=4)
    size = min(n, len(slices.images))
    return slices.subset(torch.from_numpy(np.random.default_rng(seed).choice(len(slices.images), size=size,
                                                                             replace=False)))


def read_beta(model_spec: str, n_organs: int) -> list[float]:
    """The organ weights β the model was trained with (its config), or 1 for each organ."""
    beta = model_config(model_spec).get("training", {}).get("beta")
    return list(map(float, beta)) if beta and len(beta) == n_organs else [1.0] * n_organs


def run_rounds(queue_dir: str | os.PathLike, *, device: str = "auto", guard: float = 0.0,
               replay: str | None = None, settings=None, log: Callable[[str], None] = print,
               should_stop: Callable[[], bool] = lambda: False) -> list[RoundResult]:
    """One round per (model, organ) group of pending items; returns what each round did."""
    queue = Queue(queue_dir)
    results = []
    with worker_lock(queue.root):
        for stale in (r for r in queue.rounds() if r.state is RoundState.RUNNING):  # we hold the lock: it died
            queue.update_round(stale.id, state=RoundState.INTERRUPTED, message="the worker stopped mid-round; rerun")
        pending = queue.items("pending")
        if not pending:
            log("no pending corrections")
            return []
        groups: dict[tuple, list[Item]] = {}
        for item in pending:
            groups.setdefault((item.kind, item.model, item.organ, item.condition), []).append(item)
        for (kind, model, organ, condition), items in groups.items():
            if not model:
                log(f"{len(items)} {organ or condition} correction(s) name no model and stay pending; "
                    "add them with --model")
                continue
            round_fn = ultrasound_round if kind == "ultrasound" else ct_round
            try:
                results.append(round_fn(queue, items, model, device=device, guard=guard, replay=replay,
                                        settings=settings, log=log, should_stop=should_stop))
            except (QueueError, ModelError, ValueError, OSError) as exc:  # one bad group does not stall the rest
                log(f"{kind} {organ or condition} with {model}: round failed, its {len(items)} item(s) stay "
                    f"pending: {exc}")
                results.append(RoundResult(model, error=str(exc)))
    return results
