"""Training history as CSV and PNG curves."""

from __future__ import annotations

from pathlib import Path

from ..metrics import write_rows


def write_history(path: Path, rows: list[dict]) -> None:
    """All epochs so far as CSV (one row per epoch)."""
    write_rows(path, rows)


def plot_history(path: Path, rows: list[dict], title: str) -> None:
    """Loss curves (left) and validation Dice per organ (right) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [r[key] for r in rows], marker="o", label=key.replace("_", " "))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    for key in [k for k in rows[-1] if k.startswith("val_dice_") and k != "val_dice_mean"]:
        ax_dice.plot(epochs, [r.get(key, float("nan")) for r in rows], label=key[len("val_dice_"):])
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice (2D slices)")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
