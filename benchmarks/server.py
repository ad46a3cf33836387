"""The lab server's figures: the upload latency of a correction, and the time of one retraining round.

A real server (``mousesegment serve`` on 127.0.0.1, started as tests/server/conftest.py does, with
its own model store) is sent ``--uploads`` ultrasound corrections of 35 frames of 240 x 320 uint8
(the lab's composites), each with its labels and the prediction it corrects, through
:meth:`Client.add <napari_mousesegment.remote.client.Client.add>` as the widget and the CLI send
them: TIFF encoding, the outbox on this disk (fsynced), the upload, and the server writing the item
whole (fsynced) before it answers. Then a second server with its worker is sent ``--round-items``
corrections and its round is timed, as a client sees it through ``GET /rounds``: from the upload
to the round starting (the worker polls every 5 s), and from start to end, with the worker's
default settings (40 epochs).

    python -m benchmarks.server [--uploads 20] [--touched 8] [--round-items 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BASE = "unet-heart-synthetic"
FRAMES, SHAPE = 35, (240, 320)


def corrections(n: int, touched: int, seed: int = 1000) -> list[dict]:
    """``n`` distinct ultrasound corrections, each changing ``touched`` frames of its prediction."""
    from napari_mousesegment.data.phantom_us import ultrasound_series

    out = []
    for i in range(n):
        series = ultrasound_series(seed + i, n_frames=FRAMES, frame_shape=SHAPE)
        labels = series.labels["heart"]
        prediction = labels.copy()
        prediction[[k for k in range(FRAMES) if labels[k].any()][:touched]] = 0
        out.append({"image": series.frames, "labels": labels, "prediction": prediction})
    return out


def send(client, fix: dict) -> dict:
    return client.add(fix["image"], fix["labels"], kind="ultrasound", organ="heart", model=BASE,
                      prediction=fix["prediction"])


def upload_latency(root: Path, fixes: list[dict]) -> dict:
    """Median and p90 of ``Client.add`` over the corrections, on a server without a worker."""
    from tests.server.conftest import make_server

    from napari_mousesegment.remote.client import Client, tiff_bytes, token_from

    server = make_server(root, worker=False)
    try:
        with Client(server.url, token_from(server.tokens["ann1"])) as client:
            times = []
            for fix in fixes:
                start = time.perf_counter()
                answer = send(client, fix)
                times.append(time.perf_counter() - start)
                assert answer["created"], answer
            assert len(client.items()) == len(fixes) and client.outbox.count() == 0
        start = time.perf_counter()
        sizes = [len(tiff_bytes(fixes[0][name])) for name in ("image", "labels", "prediction")]
        encode = time.perf_counter() - start
    finally:
        server.stop()
    ms = sorted(t * 1000 for t in times)
    return {"uploads": len(ms), "median_ms": round(statistics.median(ms), 1),
            "p90_ms": round(ms[min(len(ms) - 1, int(np.ceil(0.9 * len(ms))) - 1)], 1),
            "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1), "first_ms": round(times[0] * 1000, 1),
            "mb_per_correction": round(sum(sizes) / 2**20, 2), "tiff_encoding_ms": round(encode * 1000, 1)}


def round_time(root: Path, fixes: list[dict], timeout_s: float) -> dict:
    """One round of the server's worker on ``fixes``, timed through ``GET /rounds``."""
    from tests.server.conftest import make_server

    from napari_mousesegment.remote.client import Client, token_from

    server = make_server(root, worker=True)
    try:
        with Client(server.url, token_from(server.tokens["boss"])) as client:
            for fix in fixes:
                send(client, fix)
            sent = time.perf_counter()
            client.request_round()
            started = ended = None
            deadline = sent + timeout_s
            while ended is None and time.perf_counter() < deadline:
                rounds = client.rounds()
                now = time.perf_counter()
                if rounds and started is None:
                    started = now
                if rounds and rounds[-1]["state"] != "running":
                    ended, last = now, rounds[-1]
                time.sleep(0.25)
    finally:
        server.stop()
    if ended is None:
        raise TimeoutError(f"no round ended within {timeout_s} s; see {root / 'server.log'}")
    metrics = last.get("metrics") or {}
    return {"items": len(fixes), "trained_on_frames": metrics.get("trained_on"),
            "held_out_frames": metrics.get("held_out"), "epochs": last.get("epochs"), "state": last["state"], "promoted": bool(metrics.get("promoted")),
            "until_start_s": round(started - sent, 1), "round_s": round(ended - started, 1),
            "s_per_epoch": round((ended - started) / last["epochs"], 2) if last.get("epochs") else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20, help="corrections to time the upload of (20)")
    parser.add_argument("--touched", type=int, default=8, help="corrected frames per correction (8)")
    parser.add_argument("--round-items", type=int, default=1, help="corrections the timed round trains on (1)")
    parser.add_argument("--no-round", action="store_true", help="time the uploads only")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on the round after this many s")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.measure import machine

    with tempfile.TemporaryDirectory(prefix="mousesegment-bench-server-") as tmp:
        root = Path(tmp)
        os.environ["MOUSESEGMENT_HOME"] = str(root / "client-home")  # this process is the client
        os.environ["MOUSESEGMENT_OUTBOX"] = str(root / "client-outbox")
        fixes = corrections(args.uploads, args.touched)
        figures = {"machine": {**machine(torch.device("cpu")), "load_average_1min_before": os.getloadavg()[0]},
                   "correction": f"ultrasound, {FRAMES} frames of {SHAPE[0]}x{SHAPE[1]} uint8, image + labels "
                                 f"+ prediction, {args.touched} corrected frames",
                   "upload": upload_latency(root / "uploads", fixes)}
        if not args.no_round:
            figures["round"] = round_time(root / "round", fixes[: args.round_items], args.timeout)
        figures["machine"]["load_average_1min_after"] = os.getloadavg()[0]  # other work on the machine skews figures
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
