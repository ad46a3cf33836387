"""The benchmark's sections; each takes (args, device, scratch folder) and returns a flat dict."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.baseline import naive_predict_volume
from benchmarks.bigscan import bigscan
from benchmarks.learning import learning
from benchmarks.measure import best_time, conv_flops, interleaved_best, matmul_rate, peak_memory
from napari_mousesegment.data.phantom_ct import DEFAULT_SHAPE, ct_phantom
from napari_mousesegment.inference.ct import predict_volume
from napari_mousesegment.models.fold import inference_copy
from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig, count_parameters
from napari_mousesegment.models.preprocess import PLANE_AXIS, model_grid

SHIPPED_CT = "mosnet-synthetic"
US_ORGANS = ("heart", "liver", "placenta")
QUICK_CT_SHAPE = (24, 48, 64)  #: --quick: the smallest phantom, a smoke test of the code paths, not a measurement


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _ct_model(args: argparse.Namespace, device: torch.device) -> tuple[MOSnet, str]:
    from napari_mousesegment.store.load import load_model

    if args.ct_width:
        shipped = load_model(SHIPPED_CT)[1]
        config = MOSnetConfig(**{**vars(shipped), "width": args.ct_width})
        return MOSnet(config).to(device).eval(), f"MOSnet width {args.ct_width} (random weights)"
    return load_model(SHIPPED_CT, device)[0], SHIPPED_CT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ct(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """Whole-scan inference: the predictor against the naive baseline, FLOP/s and peak memory."""
    model, name = _ct_model(args, device)
    config = model.config
    scan = ct_phantom(300, "native", shape=QUICK_CT_SHAPE if args.quick else DEFAULT_SHAPE)
    image, spacing = scan.image, scan.spacing
    repeats = 1 if args.quick else 3

    def predict():
        out = predict_volume(model, image, spacing, "native")
        _sync(device)
        return out

    predict_volume(model, image[:16], spacing, "native")  # warm-up: first-call allocations and kernels
    pred = predict()
    naive_labels = naive_predict_volume(model, image, spacing, "native")[0]
    times = interleaved_best({"predictor": predict,
                              "naive": lambda: naive_predict_volume(model, image, spacing, "native")}, repeats)
    seconds, naive_seconds = times["predictor"], times["naive"]
    with peak_memory() as memory:
        predict()
    n_model = model_grid(image.shape, spacing, config.spacing_mm)[PLANE_AXIS[config.plane]]  # slices the network sees
    net = inference_copy(model)
    one = torch.zeros(1, config.input_channels, config.image_size, config.image_size, device=device)
    cond = torch.zeros(1, dtype=torch.long, device=device)
    borrowed = config.borrowed_organs("native")  # organs the native datasets never annotated: a second decoder pass
    with torch.inference_mode():
        flops_per_slice = conv_flops(lambda: net.segment(one, cond, borrowed))
    rates = matmul_rate(device, 1024 if args.quick else 2048)
    # The network alone on one default batch: its share of the scan's time, and its working memory
    # (with the weights, that is "the model" at run time).
    batch = torch.rand(32 if device.type == "cuda" else 4, config.input_channels, config.image_size, config.image_size,
                       device=device).contiguous(memory_format=torch.channels_last)
    conds = cond.expand(len(batch))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        net.segment(batch, conds, borrowed)
        net_seconds = best_time(lambda: (net.segment(batch, conds, borrowed), _sync(device)), 5)[0] / len(batch)
        with peak_memory() as running:
            net.segment(batch, conds, borrowed)
    achieved = flops_per_slice * n_model / seconds
    input_mb, model_mb = image.nbytes / 2**20, _model_bytes(model) / 2**20
    sizes = (2, 8) if args.quick else (1, 2, 4, 8, 16)  # the speed/memory trade-off of --batch-size
    runs = {size: (lambda size=size: (predict_volume(model, image, spacing, "native", batch_size=size),
                                      _sync(device))) for size in sizes}
    sweep_times = interleaved_best({str(size): run for size, run in runs.items()}, repeats)
    sweep = {}
    for size, run in runs.items():
        with peak_memory() as swept:
            run()
        sweep[f"batch{size}_seconds"] = sweep_times[str(size)]
        sweep[f"batch{size}_extra_rss_mb"] = swept["extra_mb"]
    return {
        "model": name, "parameters": count_parameters(model), "scan_shape": "x".join(map(str, image.shape)),
        "slices": image.shape[0],
        "seconds_per_scan": seconds, "slices_per_s": image.shape[0] / seconds,
        "naive_seconds_per_scan": naive_seconds, "naive_slices_per_s": image.shape[0] / naive_seconds,
        "speedup_vs_naive": naive_seconds / seconds,
        "labels_agree_with_naive": float((pred.labels == naive_labels).mean()),
        "conv_gflop_per_scan": flops_per_slice * n_model / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_gflops": rates["matmul"] / 1e9,
        **({"conv1x1_gemm_gflops": rates["conv1x1"] / 1e9} if "conv1x1" in rates else {}),
        "flops_fraction": achieved / rates["peak"],
        "network_flops_fraction": flops_per_slice / net_seconds / rates["peak"],
        "network_share_of_time": net_seconds * n_model / seconds,
        "peak_rss_mb": memory["peak_mb"], "extra_rss_mb": memory["extra_mb"],
        "input_mb": input_mb, "model_mb": model_mb, "memory_budget_mb": 4 * input_mb + model_mb,
        "network_batch_mb": running["extra_mb"],
        "memory_budget_with_activations_mb": (4 * input_mb + model_mb + running["extra_mb"]
                                              if running["extra_mb"] is not None else None),
        **sweep,
    }


def ultrasound(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """A 35-frame composite through three U-Nets to RoiSet zips, end to end as `predict ultrasound` runs it."""
    from skimage import io as skio

    from napari_mousesegment.data.phantom_us import ultrasound_series
    from napari_mousesegment.inference.ultrasound import instances, predict_probabilities
    from napari_mousesegment.io.composites import montage, read_composite
    from napari_mousesegment.jobs.rois import write_rois
    from napari_mousesegment.jobs.ultrasound import predict_ultrasound
    from napari_mousesegment.store.load import load_unet

    scratch.mkdir(parents=True, exist_ok=True)
    series = ultrasound_series(seed=290)
    source = scratch / "series.png"
    skio.imsave(source, montage(series.frames), check_contrast=False)
    models = {organ: f"unet-{organ}-synthetic" for organ in US_ORGANS}

    def run():
        return predict_ultrasound([source], list(US_ORGANS), models, scratch / "out", device=str(device),
                                  log=lambda _: None)

    run()  # warm-up
    seconds, written = best_time(run, 1 if args.quick else 3)
    rois = sorted(p.name for p in written[0].glob("*_RoiSet.zip"))
    # Where the time goes, stage by stage (the same functions the job calls).
    stages = {"read_s": 0.0, "network_s": 0.0, "instances_s": 0.0, "roiset_s": 0.0, "load_models_s": 0.0}
    t = time.perf_counter()
    frames = read_composite(source).frames
    stages["read_s"] = time.perf_counter() - t
    for organ in US_ORGANS:
        t = time.perf_counter()
        model = load_unet(models[organ], device)[0]
        stages["load_models_s"] += time.perf_counter() - t
        t = time.perf_counter()
        prob = predict_probabilities(model, frames)
        stages["network_s"] += time.perf_counter() - t
        t = time.perf_counter()
        labels = instances(prob, model.config.threshold, model.config.min_size)
        stages["instances_s"] += time.perf_counter() - t
        t = time.perf_counter()
        write_rois(scratch / f"{organ}.zip", labels, organ, log=lambda _: None)
        stages["roiset_s"] += time.perf_counter() - t
    return {"frames": len(frames), "frame_shape": "x".join(map(str, frames.shape[1:])), "organs": len(US_ORGANS),
            "seconds": seconds, "frames_per_s": len(frames) / seconds, "roisets": len(rois), **stages}


def _samples_per_s(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def _mosnet_step(config: MOSnetConfig, batch_size: int, device: torch.device) -> Callable[[], None]:
    """One MOSnet training step on a fixed random batch, as the training loop takes it."""
    from napari_mousesegment.training.loop import optimise
    from napari_mousesegment.training.mosnet import batch_loss

    model = MOSnet(config).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, s, m = batch_size, config.image_size, len(config.organs)
    image = torch.rand(b, config.channels, s, s, device=device).contiguous(memory_format=torch.channels_last)
    batch = (image, (torch.rand(b, m, s, s, device=device) > 0.8).float(),
             torch.ones(b, m, dtype=torch.bool, device=device), torch.zeros(b, dtype=torch.long, device=device))
    beta = torch.ones(m, device=device)
    return lambda: optimise(optimizer, batch_loss(model, batch, beta, 0.7).loss, "benchmark")


def _unet_step(config, batch_size: int, device: torch.device) -> Callable[[], None]:
    """One U-Net training step on augmented random crops, as the training loop takes it."""
    from napari_mousesegment.models.unet import UNet
    from napari_mousesegment.training.augment import AugmentSettings, augment
    from napari_mousesegment.training.loop import optimise
    from napari_mousesegment.training.unet import batch_loss

    model = UNet(config).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    s = config.image_size
    frames = torch.rand(batch_size, 1, s, s, device=device)
    masks = (torch.rand(batch_size, 1, s, s, device=device) > 0.7).float()
    generator = torch.Generator(device=device)
    generator.manual_seed(0)

    def step() -> None:
        image, mask = augment(frames, masks, AugmentSettings(), generator)
        optimise(optimizer, batch_loss(model, image, mask, 0.5).loss, "benchmark")

    return step


def train(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """Samples per second through the training loop's own optimisation steps."""
    from napari_mousesegment.models.unet import UNetConfig
    from napari_mousesegment.store.load import load_model
    from napari_mousesegment.training.unet import UNetSettings

    steps = 2 if args.quick else 6
    out: dict = {}
    shipped = load_model(SHIPPED_CT)[1]
    for width in [shipped.width] + ([] if args.quick else [32]):
        size, batch = (64, 4) if args.quick else (shipped.image_size, 16)
        config = MOSnetConfig(**{**vars(shipped), "width": width, "image_size": size})
        out[f"mosnet_w{width}_samples_per_s"] = _samples_per_s(_mosnet_step(config, batch, device), batch, steps,
                                                               device)
    for organ in US_ORGANS:
        shipped_unet = load_model(f"unet-{organ}-synthetic")[1]
        size, batch = (64, 4) if args.quick else (shipped_unet.image_size, UNetSettings().batch_size)
        config = UNetConfig(**{**vars(shipped_unet), "image_size": size})
        out[f"unet_{organ}_samples_per_s"] = _samples_per_s(_unet_step(config, batch, device), batch, steps, device)
    return out


def active(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """One retraining round on queued heart corrections (a new scanner's frames), to a promoted version."""
    from napari_mousesegment.active.queue import Queue
    from napari_mousesegment.active.worker import run_rounds
    from napari_mousesegment.data.phantom_us import ultrasound_series
    from napari_mousesegment.inference.ultrasound import segment_frames
    from napari_mousesegment.store.load import load_unet
    from napari_mousesegment.training.finetune import FineTuneSettings

    series = ultrasound_series(seed=270)
    frames = (np.clip(series.frames * 0.5 + 70, 0, 255) * (series.frames > 0)).astype(np.uint8)  # another scanner
    truth = series.labels["heart"]
    base = "unet-heart-synthetic"
    _, prediction = segment_frames(load_unet(base, device)[0], frames)
    with_heart = [k for k in range(len(truth)) if truth[k].any()][:8]
    corrected = prediction.copy()
    corrected[with_heart] = truth[with_heart]
    queue = Queue(scratch / "queue")
    queue.add(frames, corrected, "ultrasound", organ="heart", model=base, prediction=prediction)
    settings = FineTuneSettings(epochs=2, steps_per_epoch=2) if args.quick else FineTuneSettings()
    start = time.perf_counter()
    [result] = run_rounds(queue.root, device=str(device), settings=settings, log=lambda _: None)
    seconds = time.perf_counter() - start
    return {"corrected_frames": len(with_heart), "epochs": settings.epochs,
            "steps": settings.epochs * settings.steps_per_epoch, "seconds": seconds,
            "promoted": result.promoted, "version": result.version,
            "held_out_dice_before": result.dice_before, "held_out_dice_after": result.dice_after}


def scaling(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """CT inference at 1x, 2x and 4x the slices of one scan: time and peak memory."""
    model, _ = _ct_model(args, device)
    scan = ct_phantom(301, "native", shape=QUICK_CT_SHAPE if args.quick else DEFAULT_SHAPE)
    out: dict = {}
    predict_volume(model, scan.image[:16], scan.spacing, "native")  # warm-up
    runs = {}
    for factor in (1, 2, 4):
        # A longer animal: the scan and its mirror image, alternately, so every join is seamless.
        image = np.concatenate([scan.image if i % 2 == 0 else scan.image[::-1] for i in range(factor)])
        runs[factor] = (image, lambda image=image: (predict_volume(model, image, scan.spacing, "native"),
                                                    _sync(device)))
    times = interleaved_best({str(f): run for f, (_, run) in runs.items()}, 1 if args.quick else 3)
    for factor, (image, run) in runs.items():
        with peak_memory() as memory:
            run()
        out[f"x{factor}_slices"] = image.shape[0]
        out[f"x{factor}_seconds"] = times[str(factor)]
        out[f"x{factor}_extra_rss_mb"] = memory["extra_mb"]
        out[f"x{factor}_input_mb"] = image.nbytes / 2**20
    out["time_ratio_x2"] = out["x2_seconds"] / out["x1_seconds"]
    out["time_ratio_x4"] = out["x4_seconds"] / out["x1_seconds"]
    if out["x1_extra_rss_mb"] is not None:
        out["memory_ratio_x4"] = out["x4_extra_rss_mb"] / max(out["x1_extra_rss_mb"], 1e-3)
    return out


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device, Path], dict]] = {
    "ct": ct, "ultrasound": ultrasound, "train": train, "active": active, "scaling": scaling, "bigscan": bigscan,
    "learning": learning}
