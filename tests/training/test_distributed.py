"""Training under torchrun: two CPU processes (gloo) train one DDP model; rank 0 alone writes."""

import csv
import gc
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_mousesegment.cli import main
from napari_mousesegment.data.ct_dataset import write_ct_case
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.store.load import load_mosnet, load_unet
from napari_mousesegment.training.distributed import Ranks, epoch_order, finish, weighted_order, wrap

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*not the usual 35:UserWarning")]
SHAPE = (40, 32, 40)


def _torchrun(args: list[str], nproc: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "napari_mousesegment.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def _losses(folder) -> list[float]:
    with open(folder / "history.csv") as rows:
        return [float(r["train_loss"]) for r in csv.DictReader(rows)]


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    for seed in range(3):
        write_ct_case(root / "native", f"n{seed}", ct_phantom(seed, "native", shape=SHAPE))
    return root / "native"


def _mosnet_args(data, out, epochs: int) -> list[str]:
    return ["train", "mosnet", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--width", "4",
            "--image-size", "32", "--batch-size", "4", "--device", "cpu"]


def test_shards_are_disjoint_and_cover_every_sample():
    shards = [epoch_order(10, 3, 0, Ranks(rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5 and set(shards[0]).isdisjoint(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(10))
    assert list(epoch_order(10, 3, 0, Ranks(0, 2))) == list(shards[0])  # the same for the same seed and epoch
    assert list(epoch_order(10, 4, 0, Ranks(0, 2))) != list(shards[0])  # reshuffled every epoch


def test_weighted_shards_follow_the_weights_and_split_one_draw():
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    shards = [weighted_order(weights, 2, 0, Ranks(rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert set(np.concatenate(shards)) <= {1, 2}  # never a sample of weight 0
    many = np.concatenate([weighted_order(weights, e, 0, Ranks()) for e in range(500)])
    assert abs(np.mean(many == 2) - 0.75) < 0.05
    assert list(weighted_order(weights, 2, 0, Ranks(1, 2))) == list(shards[1])  # the same for the same seed
    assert set(weighted_order(weights, 0, -3, Ranks())) <= {1, 2}  # a negative --seed draws too


def test_mosnet_trains_on_two_processes_and_reloads_in_one(ct_data, tmp_path):
    out = tmp_path / "m"
    run = _torchrun(_mosnet_args(ct_data, out, 3))
    log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, log[-3000:]
    assert log.count("epoch 1:") == 1 and "2 processes" in log  # rank 0 alone logs
    losses = _losses(out)
    assert len(losses) == 3 and losses[-1] < losses[0]
    model, config, _ = load_mosnet(out)  # the weights rank 0 wrote load in a single process
    assert config.width == 4
    assert main([*_mosnet_args(ct_data, out, 4), "--resume"]) == 0  # and the checkpoint resumes there
    assert len(_losses(out)) == 4


def test_unet_trains_on_two_processes(tmp_path):
    lab = tmp_path / "lab"
    for seed in range(4):
        write_us_series(lab / f"S{seed}", ultrasound_series(seed=seed, n_frames=4, frame_shape=(64, 96)))
    out = tmp_path / "u"
    run = _torchrun(["train", "unet", "--organ", "placenta", "--data", str(lab), "--out", str(out), "--arch",
                     "residual", "--width", "4", "--image-size", "32", "--epochs", "3", "--finetune-epochs", "1",
                     "--batch-size", "4", "--lr", "3e-3", "--test", "1", "--device", "cpu"])
    log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, log[-3000:]
    assert log.count("on validation): Dice") == 1 and log.count("model -> ") == 1  # rank 0 alone
    losses = _losses(out)
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # the cosine budget: no fine-tuning stage
    _, config, meta = load_unet(out)
    assert config.organ == "placenta" and 0 < config.threshold < 1 and meta["threshold_choice"]


def test_finish_frees_a_ddp_module_left_in_a_reference_cycle(tmp_path):
    """A DDP module in a reference cycle holds the gloo group: finish() collects it before leaving
    the group, so the group's threads do not stop in the interpreter's teardown (a rank aborted
    there once, after its work was done)."""
    import weakref

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    gc.disable()  # only finish() may collect the cycle
    try:
        net = wrap(torch.nn.Linear(2, 2), Ranks(0, 2), torch.device("cpu"))
        cycle = {"net": net}
        cycle["itself"] = cycle
        alive = weakref.ref(net)
        del net, cycle
        assert alive() is not None  # garbage, but not yet collected
        finish()
        assert alive() is None and not dist.is_initialized()
    finally:
        gc.enable()
        finish()


def test_a_failed_rank_ends_the_run_and_the_checkpoint_stays_usable(ct_data, tmp_path):
    import psutil

    out = tmp_path / "m"
    run = _torchrun(_mosnet_args(ct_data, out, 400), start_new_session=True)
    try:
        state = out / "checkpoint" / "state.json"
        deadline = time.monotonic() + 300
        while not state.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)
        assert state.exists(), "no checkpoint was written"
        workers = psutil.Process(run.pid).children(recursive=True)
        ranks = [p for p in workers if "napari_mousesegment.cli" in " ".join(p.cmdline())]
        assert len(ranks) == 2
        ranks[-1].send_signal(signal.SIGKILL)  # one rank dies mid-run
        run.communicate(timeout=120)  # torchrun stops the other rank and fails
        assert run.returncode != 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    done = len(_losses(out))
    assert main([*_mosnet_args(ct_data, out, done + 1), "--resume"]) == 0  # the last checkpoint resumes
    assert len(_losses(out)) == done + 1
