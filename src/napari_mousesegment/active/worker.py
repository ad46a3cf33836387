"""Retraining rounds: queued corrections -> fine-tuned model -> a new version, promoted if not worse.

One worker at a time per queue (an OS file lock, released even when the process is killed, on
every platform). A round marks its items used only after its version is published, so a killed
round leaves them pending and the next run does the whole round again; the store keeps serving
the last good version throughout. A round killed after publishing is finished by the next worker
from the decision recorded with its version (:func:`..store.versions.settle`), so its items are
trained on once.

Each round chooses its new version's threshold(s) as ``train`` does (a U-Net's by the rule it
was trained with, a MOSnet's per organ), on the held-out corrected frames, or on the corrected
frames it trained on when fewer than :data:`.rounds.MIN_EVIDENCE` held-out ones have an organ.
The version is then promoted only on evidence (:func:`.rounds.promotion`): both versions scored
on the same held-out frames at their own thresholds, the new one finding organs there and not
worse than ``guard``.

No item stops the worker: before a round each item is checked (its files read, its voxel size,
label ids, organ or condition against the model, its corrected frames), and one that fails is
marked ``failed`` with the reason and skipped while the rest of its group trains; so is an item
that breaks the round's data preparation. A round that fails for another reason leaves its items
pending and is recorded as failed; the polling loop (:func:`poll`) goes on after any error, and
tries a failed group again after a pause that doubles (:class:`Backoff`) or when new items arrive.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from ..metrics import dice
from ..models.folder import ModelError
from ..models.preprocess import pick_device
from ..store import versions
from ..store.load import load_model
from ..store.registry import model_config
from .queue import Item, Queue, QueueError, check_labels
from .rounds import (
    MIN_EVIDENCE,
    HeldOut,
    Round,
    RoundResult,
    RoundState,
    ThresholdChoice,
    promotion,
)

ERROR_LOG = "worker-errors.log"  #: in the queue folder: the traceback of each failed pass or round
BACKOFF_S = (60.0, 3600.0)  #: first and longest pause before a failed group is tried again


class WorkerBusy(QueueError):
    """Another worker holds the queue's lock."""


class ItemError(QueueError):
    """One item broke a round (its data could not be prepared): it is set aside, the rest goes on."""

    def __init__(self, item_id: int, message: str) -> None:
        super().__init__(message)
        self.item_id = item_id


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
        raise WorkerBusy(f"{root}: another worker is running a round on this queue "
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
        try:
            if item_id not in cache:
                cache[item_id] = by_id[item_id].image(), by_id[item_id].labels()
            frames.append(cache[item_id][0][frame])
            masks.append(cache[item_id][1][frame])
        except Exception as exc:  # whatever reading or indexing one item raises is that item's fault
            raise ItemError(item_id, _reason(exc)) from exc
    try:
        return np.stack(frames), np.stack(masks)
    except ValueError as exc:  # frames of different sizes: the group cannot be stacked, no one item to blame
        raise QueueError(f"the corrected frames of items {sorted(by_id)} differ in size ({exc})") from exc


def _reason(exc: BaseException) -> str:
    """One line for an exception: its message, or its type when it has none."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:400]


def item_problem(item: Item, config, kind: str) -> str | None:
    """Why ``item`` cannot be trained on with a model of this ``config``, in one line, or None.

    Reads its arrays (a truncated or damaged file fails here), and checks its corrected frames,
    finite image values, the voxel size of a micro-CT item, its condition or organ against the
    model, and that its labels are ids the model has.
    """
    from ..io.readers import check_spacing

    try:
        image, labels = item.image(), item.labels()
    except Exception as exc:  # noqa: BLE001  (Item reports damaged files as QueueError; any other error is as fatal)
        return _reason(exc)
    if not item.touched:
        return "no corrected frame or slice to train on"
    if not all(isinstance(k, int) and 0 <= k < len(labels) for k in item.touched):
        return f"corrected frames {item.touched} are not all within its {len(labels)} frames"
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        return f"{item.folder / 'image.tif'}: NaN or infinite values"
    try:
        check_labels(labels, kind, str(item.folder / "labels.tif"))  # the queue's own rule for any model
    except QueueError as exc:
        return _reason(exc)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if kind == "ct":
        try:
            check_spacing(item.spacing or (), f"item {item.id}")
        except (TypeError, ValueError) as exc:
            return _reason(exc)
        if item.condition not in config.conditions:
            return f"condition {item.condition!r} is not one the model knows ({', '.join(config.conditions)})"
        if low < 0 or high > len(config.organs):
            return (f"labels {low}..{high} are outside the model's organ ids 0..{len(config.organs)} "
                    f"({', '.join(config.organs)})")
    else:
        if item.organ != config.organ:
            return f"organ {item.organ!r} is not the model's ({config.organ!r})"
    return None


def set_aside(queue: Queue, items: list[Item], config, kind: str, log: Callable[[str], None]) -> list[Item]:
    """The items fit to train on; each other one is marked ``failed`` with its reason and logged."""
    keep = []
    for item in items:
        reason = item_problem(item, config, kind)
        if reason is None:
            keep.append(item)
        else:
            queue.mark_failed([item.id], reason)
            log(f"item {item.id} set aside (failed): {reason}")
    return keep


def pixel_dice(model, frames: np.ndarray, masks: np.ndarray) -> float:
    """Pixel Dice of the model's thresholded probability against ``masks`` over all frames."""
    from ..inference.ultrasound import predict_probabilities

    return dice(predict_probabilities(model, frames) > model.config.threshold, masks > 0)


def with_organ(masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Which frames (N, H, W) or slices (N, M, S, S) have an organ: a bool per one."""
    masks = np.asarray(masks)
    if masks.size == 0:  # no frames (a round with nothing held out), or frames of no pixels
        return np.zeros(len(masks), bool)
    return masks.reshape(len(masks), -1).any(1)


def unet_held_out(model, frames: np.ndarray, masks: np.ndarray) -> HeldOut:
    """A U-Net on held-out frames at its own threshold: pixel Dice over all of them, and the frames
    with an organ where the instances it segments (as ``predict`` makes them) meet that organ."""
    from ..inference.ultrasound import instances, predict_probabilities

    organ = with_organ(masks)
    if not organ.any():
        return HeldOut(None, 0, 0)
    threshold = model.config.threshold
    prob = predict_probabilities(model, frames)
    found = instances(prob[organ], threshold, model.config.min_size) > 0
    hits = int(with_organ(found & (masks[organ] > 0)).sum())
    return HeldOut(dice(prob > threshold, masks > 0), hits, int(organ.sum()))


def choose_unet_threshold(model, frames: np.ndarray, masks: np.ndarray, on: str,
                          precision_target: float | None = None, rule: str = "dice") -> ThresholdChoice:
    """Set a fine-tuned U-Net's threshold by the rule ``train unet`` used for it (``rule``: the
    largest Dice or F0.5; or the lowest reaching ``precision_target``) on ``frames``; kept when
    their masks hold no organ."""
    from ..inference.ultrasound import predict_probabilities
    from ..training.thresholds import choose_threshold

    before = float(model.config.threshold)
    if not (masks > 0).any():
        return ThresholdChoice(before, before, "kept")
    prob = torch.from_numpy(predict_probabilities(model, frames))
    threshold, _ = choose_threshold(prob, torch.from_numpy((masks > 0).astype(np.float32)), precision_target, rule)
    model.config.threshold = threshold
    return ThresholdChoice(before, threshold, on)


def ct_held_out(model, images: torch.Tensor, masks: torch.Tensor, condition: int) -> HeldOut:
    """A MOSnet on held-out slices at its own thresholds: mean Dice of the organs present, and the
    slices with an organ where its labels meet one of their organs."""
    from ..training.finetune import ct_labels, organ_dice

    organ = with_organ(masks)
    if not organ.any():
        return HeldOut(None, 0, 0)
    labels = ct_labels(model, images, condition)
    rows = torch.from_numpy(organ)
    ids = torch.arange(1, masks.shape[1] + 1).view(1, -1, 1, 1)
    hits = int(with_organ((labels[rows][:, None] == ids) & masks[rows].bool()).sum())
    return HeldOut(organ_dice(labels, masks), hits, int(organ.sum()))


def fused_held_out(model, scans: list[tuple[np.ndarray, np.ndarray, tuple, list[int]]], condition: str) -> HeldOut:
    """A multi-planar MOSnet on held-out axial slices as ``predict ct`` labels them: each scan
    ``(image, labels, spacing, held-out slice indices)`` predicted whole, its planes fused, and read
    at those slices on the scan's own grid. Scored as :func:`ct_held_out` scores slices."""
    from ..inference.ct import predict_volume

    n = len(model.config.organs)
    found, with_organs, pred_all, truth_all = 0, 0, [], []
    for image, labels, spacing, hold in scans:
        pred = predict_volume(model, image, spacing, condition).labels[hold]
        truth = np.asarray(labels)[hold]
        for p, t in zip(pred, truth):
            organ = (t > 0) & (t <= n)
            with_organs += bool(organ.any())
            found += bool((organ & (p == t)).any())
        pred_all.append(pred.ravel())
        truth_all.append(truth.ravel())
    if not with_organs:
        return HeldOut(None, 0, 0)
    p, t = np.concatenate(pred_all), np.concatenate(truth_all)
    return HeldOut(float(np.mean([dice(p == k, t == k) for k in range(1, n + 1) if (t == k).any()])), found,
                   with_organs)


def choose_ct_thresholds(model, images: torch.Tensor, masks: torch.Tensor, condition: int,
                         on: str) -> ThresholdChoice:
    """Set a fine-tuned MOSnet's per-organ thresholds as ``train mosnet`` chooses them, from its
    current ones and for the organs ``masks`` hold (:func:`..training.thresholds.refine_thresholds`)."""
    from ..training.slices import SliceSet
    from ..training.thresholds import refine_thresholds

    config = model.config
    before = dict(zip(config.organs, config.organ_thresholds()))
    if not masks.any():
        return ThresholdChoice(before, before, "kept")
    n = len(images)
    data = SliceSet(images.half(), masks.bool(), torch.ones((n, len(config.organs)), dtype=torch.bool),
                    torch.full((n,), condition), ["round"] * n)
    chosen, _, _ = refine_thresholds(model, data, next(model.parameters()).device)
    config.thresholds = chosen
    return ThresholdChoice(before, chosen, on)


@dataclass
class _Plan:
    """What a round does, as its modality prepares it (see :func:`_round`)."""

    fine_tune: Callable  #: (model, report, should_stop) -> a fine-tuned copy
    choose: Callable  #: (tuned) -> ThresholdChoice, setting the copy's threshold(s)
    score: Callable  #: (model) -> HeldOut on the held-out frames or slices
    n_train: int
    n_held: int
    unit: str = "frames"


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
           settings, log: Callable[[str], None], should_stop: Callable[[], bool]) -> RoundResult | None:
    """The round both modalities share: base version, items checked, fine-tune, threshold(s) chosen,
    both versions scored on the held-out data, publish with the promote decision, promote on
    evidence (:func:`.rounds.promotion`), and only then mark the items used.

    ``prepare(model, config, items, settings)`` returns a :class:`_Plan`. Returns None when every
    item was set aside. Any failure is recorded as a failed round (cancelled for ``should_stop``) and raised.
    """
    from ..training.finetune import FineTuneSettings

    name = versions.lab_name(model_spec)
    ids = [i.id for i in items]
    try:
        versions.ensure_base(name, model_spec)
        current = versions.current(name)
        dev = pick_device(device)
        model, config, _ = load_model(name, dev, kind={"ultrasound": "unet", "ct": "mosnet"}[kind])
    except Exception as exc:
        _record_failure(queue, name, ids, exc)
        raise
    items = set_aside(queue, items, config, kind, log)
    aside = tuple(i for i in ids if i not in {item.id for item in items})
    if not items:
        return None
    settings = settings or FineTuneSettings()
    round_id = queue.start_round(name, [i.id for i in items])

    def report(event: dict) -> None:
        queue.update_round(round_id, epoch=event["epoch"], epochs=event["epochs"], loss=event["loss"],
                           eta_s=event["eta_s"])
        log(f"  epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.4f}, eta {event['eta_s']:.0f} s")
        versions.fault_point("training")

    try:
        plan = prepare(model, config, items, settings)
        log(f"round {round_id}: {name} (v{current}) on {plan.n_train} corrected {plan.unit} of {len(items)} "
            f"item(s), {plan.n_held} held out; device {dev}")
        tuned = plan.fine_tune(model, report, should_stop)
        choice = plan.choose(tuned)
        log(f"round {round_id}: {choice.text()}")
        before, after = plan.score(model), plan.score(tuned)
        promote, verdict = promotion(before, after, guard, plan.unit)
        result = RoundResult(name, held_out=plan.n_held, dice_before=before.dice, dice_after=after.dice,
                             trained_on=plan.n_train, with_organs=after.with_organs, found_before=before.found,
                             found_after=after.found, threshold=choice, verdict=verdict)
        version = versions.publish(name, tuned, tuned.config, current, [i.id for i in items], result.metrics(),
                                   decision={"queue": _key(queue), "id": round_id, "promote": promote,
                                             "verdict": verdict})
        promoted, verdict = versions.settle(name, version)
        _finish(queue, round_id, name, version, [i.id for i in items], {**result.metrics(), "promoted": promoted},
                verdict)
        log(f"round {round_id}: held-out Dice {_fmt(before.dice)} -> {_fmt(after.dice)}; version {version} {verdict}")
        return replace(result, version=version, promoted=promoted, set_aside=aside, verdict=verdict)
    except BaseException as exc:
        queue.update_round(round_id, message=_reason(exc),
                           state=RoundState.CANCELLED if isinstance(exc, InterruptedError) else RoundState.FAILED)
        raise


def _key(queue: Queue) -> str:
    """How a version names the queue its round ran on."""
    return str(queue.root.resolve())


def _record_failure(queue: Queue, model: str, ids: list[int], exc: BaseException) -> None:
    """A round that failed before it started, recorded like one that failed mid-way."""
    round_id = queue.start_round(model, ids)
    queue.update_round(round_id, state=RoundState.FAILED, message=_reason(exc))


def _finish(queue: Queue, round_id: int, name: str, version: str, ids: list[int], metrics: dict,
            verdict: str) -> None:
    """Mark the round's items used by ``version`` (once) and the round done."""
    tag = f"{name}:v{version}"
    queue.mark_used([i for i in ids if tag not in _used_in(queue, i)], tag)
    queue.update_round(round_id, state=RoundState.DONE, version=version, metrics=metrics, message=verdict)


def _used_in(queue: Queue, item_id: int) -> list[str]:
    try:
        return queue.get(item_id).used_in
    except QueueError:  # removed meanwhile
        return []


def resume(queue: Queue, log: Callable[[str], None] = print, *, clean_store: bool = True) -> None:
    """What dead workers left on this queue (call with the worker lock held).

    With ``clean_store``, crash leftovers in the model store are cleaned first
    (:func:`..store.versions.recover_all`). A round that published its version but did not finish
    (its worker died, or promoting failed) is finished from the decision recorded with the version,
    so its items are not trained on again; any other round still marked running is marked
    interrupted (its items stay pending and train in the next round).
    """
    if clean_store:
        for line in versions.recover_all():
            log(line)
    unfinished = (RoundState.RUNNING, RoundState.INTERRUPTED, RoundState.FAILED)
    stale = [r for r in queue.rounds() if r.state in unfinished]
    published: dict[str, dict[int, str]] = {}
    for model in {r.model for r in stale if r.model}:
        try:
            published[model] = versions.published_rounds(model, _key(queue))
        except (ModelError, OSError) as exc:
            log(f"{model}: could not read its versions ({exc}); its unfinished rounds are not resumed")
    for r in stale:
        version = published.get(r.model or "", {}).get(r.id)
        if version is not None:
            try:
                _settle_left(queue, r, version, log)
                continue
            except (ModelError, OSError) as exc:
                log(f"round {r.id}: version {version} could not be settled ({_reason(exc)}); tried again next pass")
        if r.state is RoundState.RUNNING:  # we hold the lock: its worker died
            queue.update_round(r.id, state=RoundState.INTERRUPTED, message="the worker stopped mid-round; rerun")


def _settle_left(queue: Queue, stale: Round, version: str, log: Callable[[str], None]) -> None:
    """Finish a round that published ``version`` but stopped before it was done."""
    name = str(stale.model)
    promoted, verdict = versions.settle(name, version)
    metrics = next((v.get("metrics", {}) for v in versions.versions(name) if v["version"] == version), {})
    verdict = f"{verdict} (finished after its worker stopped)"
    _finish(queue, stale.id, name, version, stale.items, {**metrics, "promoted": promoted}, verdict)
    log(f"round {stale.id}: {name} version {version} was published before its worker stopped; {verdict}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def ultrasound_round(queue: Queue, items: list[Item], model_spec: str, *, device: str = "auto",
                     guard: float = 0.0, replay: str | None = None, settings=None,
                     log: Callable[[str], None] = print,
                     should_stop: Callable[[], bool] = lambda: False) -> RoundResult:
    """Fine-tune one organ's U-Net on its queued corrections and publish the result as a version."""
    from ..training.finetune import fine_tune_unet

    organ = items[0].organ

    def prepare(model, config, items, settings) -> _Plan:
        train_pairs, held_pairs = split_frames(items)
        if not train_pairs:
            raise QueueError(f"{organ}: the corrections touch no frame to train on")
        frames, masks = _gather(items, train_pairs)
        held_f, held_m = _gather(items, held_pairs) if held_pairs else (frames[:0], masks[:0])
        old = _replay(replay, organ, len(frames), settings.seed)
        on_held = with_organ(held_m).sum() >= MIN_EVIDENCE  # else the frames it trains on, as `train` validates
        pick_f, pick_m = (held_f, held_m) if on_held else (frames, masks)
        target, rule = read_precision_target(model_spec), read_threshold_rule(model_spec)
        return _Plan(lambda m, report, stop: fine_tune_unet(m, frames, masks, settings, old, report, stop),
                     lambda m: choose_unet_threshold(m, pick_f, pick_m, "held-out" if on_held else "training",
                                                     target, rule),
                     lambda m: unet_held_out(m, held_f, held_m), len(train_pairs), len(held_pairs))

    return _round(queue, items, model_spec, "ultrasound", prepare, device=device, guard=guard,
                  settings=settings, log=log, should_stop=should_stop)


def ct_round(queue: Queue, items: list[Item], model_spec: str, *, device: str = "auto", guard: float = 0.0,
             replay: str | None = None, settings=None, log: Callable[[str], None] = print,
             should_stop: Callable[[], bool] = lambda: False) -> RoundResult:
    """Fine-tune a MOSnet on the corrected slices of one condition and publish the result as a version.

    The corrections are axial slices, so a multi-planar model (``--plane axial+coronal...``) learns
    them on its axial plane and replays the original dataset on all its planes. Its thresholds are
    chosen on its axial reading of the slices, as ``train mosnet`` chooses them slice by slice; the
    versions are judged on the labels ``predict ct`` gives, its planes fused over each whole scan
    (:func:`fused_held_out`). A model that never sees the axial plane is refused.
    """
    from ..training.finetune import fine_tune_mosnet
    from ..training.slices import corrected_slices

    condition = items[0].condition

    def prepare(model, config, items, settings) -> _Plan:
        if condition not in config.conditions:
            raise QueueError(f"model {model_spec} knows conditions {config.conditions}, not {condition!r}")
        if "axial" not in config.planes:  # the model's fault, not the items': they wait for an axial model
            raise QueueError(f"model {model_spec} was trained on {config.plane} slices; micro-CT corrections "
                             "are taken slice by slice on the axial plane")
        train, held, held_scans = [], [], []
        for item in items:  # every 4th touched slice of each item is held out, as for frames
            hold = item.touched[3::4] or (item.touched[-1:] if len(item.touched) >= 2 else [])
            keep = [k for k in item.touched if k not in hold]
            try:
                image, labels = item.image(), item.labels()
                train.append(corrected_slices(image, labels, item.spacing, keep, config))
                if hold:
                    held.append(corrected_slices(image, labels, item.spacing, hold, config))
                    held_scans.append((image, labels, item.spacing, hold))
            except Exception as exc:  # this item's files or voxel size: it alone is set aside
                raise ItemError(item.id, _reason(exc)) from exc
        images, masks = (torch.cat(t) for t in zip(*train))
        held_i, held_m = (torch.cat(t) for t in zip(*held)) if held else (images[:0], masks[:0])
        on_held = with_organ(held_m).sum() >= MIN_EVIDENCE
        pick_i, pick_m = (held_i, held_m) if on_held else (images, masks)
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
        elif len(config.planes) > 1:
            log("no slices replayed: the round trains the multi-planar model on its axial plane alone")
        weights = read_loss_weights(model_spec)

        def score(m) -> HeldOut:
            if len(config.planes) > 1:
                return fused_held_out(m, held_scans, condition)
            return ct_held_out(m, held_i, held_m, code)

        return _Plan(lambda m, report, stop: fine_tune_mosnet(m, images, masks, annotated, conditions, beta,
                                                              settings, report, stop, **weights),
                     lambda m: choose_ct_thresholds(m, pick_i, pick_m, code, "held-out" if on_held else "training"),
                     score, n, len(held_i), "slices")

    return _round(queue, items, model_spec, "ct", prepare, device=device, guard=guard, settings=settings,
                  log=log, should_stop=should_stop)


def _ct_replay(data: str | None, config, n: int, seed: int):
    """``n`` random slices of an original micro-CT dataset folder (the model's preprocessing), or None."""
    if not data:
        return None
    from ..data.ct_dataset import read_ct_dataset
    from ..training.slices import build_slices

    dataset = read_ct_dataset(data)
    if dataset.condition not in config.conditions:
        return None
    slices = build_slices([dataset], config, stride=4)
    size = min(n, len(slices.images))
    return slices.subset(torch.from_numpy(np.random.default_rng(seed).choice(len(slices.images), size=size,
                                                                             replace=False)))


def read_precision_target(model_spec: str) -> float | None:
    """The precision target a U-Net's threshold was chosen for in training (its config), or None
    (then the rule of :func:`read_threshold_rule`)."""
    target = model_config(model_spec).get("training", {}).get("settings", {}).get("precision_target")
    return float(target) if isinstance(target, (int, float)) and 0 < target <= 1 else None


def read_threshold_rule(model_spec: str) -> str:
    """The rule a U-Net's threshold was chosen by in training (its config; see :func:`.recorded_rule`)."""
    from ..training.thresholds import recorded_rule

    return recorded_rule(model_config(model_spec))


def read_loss_weights(model_spec: str) -> dict[str, float]:
    """The soft Dice and exclusion weights of the model's training loss (``train mosnet --dice-weight``,
    ``--exclusion-weight``), 0 for each the model was trained without."""
    settings = model_config(model_spec).get("training", {}).get("settings", {})
    return {key: float(settings.get(key, 0.0)) for key in ("dice_weight", "exclusion_weight")}


def read_beta(model_spec: str, n_organs: int) -> list[float]:
    """The organ weights β the model was trained with (its config), or 1 for each organ."""
    beta = model_config(model_spec).get("training", {}).get("beta")
    return list(map(float, beta)) if beta and len(beta) == n_organs else [1.0] * n_organs


class Backoff:
    """When to try a group of items again after its round failed for a reason no item carries.

    The pause doubles with each failure of the same items (``first`` up to ``longest`` seconds);
    a new item in the group, or a success, ends it. Kept in memory by the polling loop.
    """

    def __init__(self, first: float = BACKOFF_S[0], longest: float = BACKOFF_S[1],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first, self.longest, self.clock = first, longest, clock
        self._failed: dict[tuple, tuple[frozenset[int], float, float]] = {}  # group -> (items, pause, until)

    def due(self, group: tuple, ids: list[int]) -> bool:
        """Whether the group's round should run now."""
        held = self._failed.get(group)
        if held is None or held[0] != frozenset(ids):  # never failed, or new items arrived
            return True
        return self.clock() >= held[2]

    def failed(self, group: tuple, ids: list[int]) -> float:
        """Record a failure; returns the pause before the next try."""
        held = self._failed.get(group)
        pause = self.first if held is None or held[0] != frozenset(ids) else min(held[1] * 2, self.longest)
        self._failed[group] = (frozenset(ids), pause, self.clock() + pause)
        return pause

    def succeeded(self, group: tuple) -> None:
        self._failed.pop(group, None)


def run_rounds(queue_dir: str | os.PathLike, *, device: str = "auto", guard: float = 0.0,
               replay: str | None = None, settings=None, log: Callable[[str], None] = print,
               should_stop: Callable[[], bool] = lambda: False, backoff: Backoff | None = None,
               clean_store: bool = True) -> list[RoundResult]:
    """One round per (model, organ) group of pending items; returns what each round did.

    Items that cannot be read or trained on are set aside as failed (see :func:`item_problem`) and
    the rest of their group trains; a round that fails otherwise is recorded, its items stay
    pending, and the other groups still run. With ``backoff`` a group whose round failed waits
    before it is tried again. First, what dead workers left is resumed or cleaned (:func:`resume`;
    the model store's leftovers only with ``clean_store``).
    """
    queue = Queue(queue_dir)
    results = []
    with worker_lock(queue.root):
        resume(queue, log, clean_store=clean_store)
        pending = queue.items("pending")
        if not pending:
            log("no pending corrections")
            return []
        groups: dict[tuple, list[Item]] = {}
        for item in pending:
            groups.setdefault((item.kind, item.model, item.organ, item.condition), []).append(item)
        for group, items in groups.items():
            kind, model, organ, condition = group
            if not model:
                log(f"{len(items)} {organ or condition} correction(s) name no model and stay pending; "
                    "add them with --model")
                continue
            if backoff is not None and not backoff.due(group, [i.id for i in items]):
                continue
            result = _group_round(queue, items, group, device=device, guard=guard, replay=replay,
                                  settings=settings, log=log, should_stop=should_stop)
            if result is None:
                continue
            if backoff is not None:
                if result.failed:
                    pause = backoff.failed(group, [i.id for i in items if i.id not in result.set_aside])
                    log(f"{kind} {organ or condition} with {model}: next try in {pause:.0f} s, or when an item "
                        "is added to it")
                else:
                    backoff.succeeded(group)
            results.append(result)
    return results


def _group_round(queue: Queue, items: list[Item], group: tuple, **options) -> RoundResult | None:
    """The round of one group; an item that breaks it is set aside and the round runs again without it.
    Returns None when every item was set aside."""
    kind, model, organ, condition = group
    round_fn = ultrasound_round if kind == "ultrasound" else ct_round
    log = options["log"]
    aside: list[int] = []
    while True:
        try:
            result = round_fn(queue, items, model, **options)
            if result is None:  # every remaining item was set aside before training
                return RoundResult(model, error="every item was set aside", set_aside=tuple(aside)) if aside else None
            return replace(result, set_aside=tuple(aside) + result.set_aside)
        except ItemError as exc:  # pinned on one item: set it aside, train the others
            queue.mark_failed([exc.item_id], str(exc))
            log(f"item {exc.item_id} set aside (failed): {exc}")
            aside.append(exc.item_id)
            items = [i for i in items if i.id != exc.item_id]
            if not items:
                return RoundResult(model, error="every item of the group was set aside", set_aside=tuple(aside))
        except Exception as exc:  # noqa: BLE001  (one bad group does not stall the rest; the round is recorded)
            log(f"{kind} {organ or condition} with {model}: round failed, its {len(items)} item(s) stay "
                f"pending: {_reason(exc)}")
            if not isinstance(exc, InterruptedError):  # a stop asked for is no error to look into
                _log_traceback(queue.root, f"round of {kind} {organ or condition} with {model}")
            return RoundResult(model, error=_reason(exc), set_aside=tuple(aside))


def _log_traceback(root: Path, what: str) -> Path | None:
    """Append the current exception's traceback to the queue's :data:`ERROR_LOG` (kept under
    about a megabyte); returns the file, or None when it cannot be written."""
    path = Path(root) / ERROR_LOG
    try:
        if path.is_file() and path.stat().st_size > 1_000_000:
            os.replace(path, path.with_name(ERROR_LOG + ".1"))
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {what}\n{traceback.format_exc()}\n")
    except OSError:
        return None
    return path


def poll(queue_dir: str | os.PathLike, *, poll_s: float = 30.0, once: bool = False,
         should_stop: Callable[[], bool] = lambda: False, log: Callable[[str], None] = print,
         warn: Callable[[str], None] = print, on_result: Callable[[RoundResult], None] = lambda r: None,
         sleep: Callable[[float], None] = time.sleep, backoff: Backoff | None = None, **options) -> None:
    """The worker: a pass of :func:`run_rounds` every ``poll_s`` seconds until ``should_stop``.

    With ``once``, one pass, whose errors are raised. Without, any error of a pass (a damaged
    queue, a full disk, a lock held by another worker after the first pass) is one line to
    ``warn``, its traceback goes to the queue's :data:`ERROR_LOG`, and the loop goes on; only
    KeyboardInterrupt and SystemExit end it. A refusal on the first pass (another worker holds
    the lock) is raised, so a second worker started by hand says so and exits.
    """
    backoff = backoff or Backoff()
    first = True
    while True:
        try:
            for result in run_rounds(queue_dir, log=log, should_stop=should_stop, backoff=None if once else backoff,
                                     clean_store=first, **options):
                on_result(result)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if once or (first and isinstance(exc, WorkerBusy)):
                raise
            where = _log_traceback(Path(queue_dir), "worker pass")
            warn(f"pass failed: {_reason(exc)}" + (f" (traceback in {where})" if where else "")
                 + f"; next pass in {poll_s:g} s")
        first = False
        if once or should_stop():
            return
        sleep(poll_s)
