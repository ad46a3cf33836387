"""Our models as BioImage Model Zoo packages (bioimage.io, format 0.5): ``models export --format bioimageio``.

A package is a zip that bioimageio.core, deepImageJ (Fiji), ilastik and other napari plugins
read. It holds the weights twice (a pytorch state dict with the architecture's own source file,
and TorchScript), the steps the format can express (scale grey values by 1/255, or the HU window
as clip plus linear scale, then a sigmoid), test tensors that our own predictor made, a cover
image, a README, the citations and the licence. Our ``config.json`` and ``weights.safetensors``
ride along as attachments, so that ``models import`` restores the exact model without unpickling.

A MOSnet's condition becomes one package per condition (``NAME-native.zip``,
``NAME-contrast.zip``): bioimage.io consumers feed one image tensor. Steps the format cannot
express (resampling to the model's voxel size, the organ vote, watershed instances, ROI export)
are named in each package's README and remain this plugin's work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..models.folder import CONFIG, WEIGHTS, ModelError, load_folder, read_config
from ..store.bioimageio_import import CONFIG_KEY, require_bioimageio
from ..store.registry import resolve

#: Where the package points users for the code, documentation and issues.
HOMEPAGE = "https://github.com/napari-mousesegment/napari-mousesegment"
MOSNET_DOI = "10.1515/bmt-2024-0451"


def export_bioimageio(spec: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write one bioimage.io zip per U-Net, or per MOSnet condition, into ``out_dir``.

    Each zip is written under a temporary name and renamed, so an interrupted export leaves no
    half-written package; an existing zip is replaced only with ``force``.
    """
    require_bioimageio()
    folder = resolve(spec)
    meta = read_config(folder)
    name = folder.name
    kind = meta.get("kind", "mosnet")
    variants = [None] if kind == "unet" else list(meta.get("conditions", []))
    out_dir = Path(out_dir).expanduser()
    targets = [out_dir / (f"{name}.zip" if v is None else f"{name}-{v}.zip") for v in variants]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ModelError(f"{', '.join(existing)} exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, _, _ = load_folder(folder)
    for condition, target in zip(variants, targets):
        with tempfile.TemporaryDirectory(prefix="mousesegment-bioimageio-") as tmp:
            work = Path(tmp)
            descr = (_unet_description(model, meta, name, folder, work) if condition is None
                     else _mosnet_description(model, meta, name, folder, work, condition))
            _save(descr, target)
    return targets


def _save(descr: Any, target: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    partial = target.with_name(target.name + ".partial")
    try:
        save_bioimageio_package(descr, output_path=partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _weights(net, example: np.ndarray, architecture: tuple[str, dict], work: Path) -> Any:
    """The two weight entries of ``net``: its state dict, whose architecture is ``net``'s own source
    file with ``architecture`` = (callable, kwargs), and TorchScript traced on ``example``."""
    import sys

    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    callable_name, kwargs = architecture
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, work / "weights.pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; bioimage.io runs it
        traced = torch.jit.trace(net.eval(), torch.from_numpy(example), check_trace=False)
        traced.save(str(work / "weights_torchscript.pt"))
    module = Path(sys.modules[type(net).__module__].__file__)  # imports only torch: runs on its own
    shutil.copy2(module, work / module.name)
    version = Version(torch.__version__.split("+")[0])
    return WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=work / "weights.pt", pytorch_version=version,
            architecture=ArchitectureFromFileDescr(source=work / module.name, callable=callable_name, kwargs=kwargs)),
        torchscript=TorchscriptWeightsDescr(source=work / "weights_torchscript.pt", pytorch_version=version,
                                            parent="pytorch_state_dict"),
    )


def _fields(model) -> dict[str, Any]:
    """The config fields that rebuild ``model``: the architecture callable's kwargs (JSON values)."""
    from dataclasses import asdict

    return asdict(model.config)


def _unet_description(model, meta: dict, name: str, folder: Path, work: Path) -> Any:
    from bioimageio.spec.model.v0_5 import ScaleLinearDescr, ScaleLinearKwargs, SigmoidDescr

    from ..data.phantom_us import ultrasound_series
    from ..inference.ultrasound import predict_probabilities

    frames = ultrasound_series(seed=11, n_frames=1).frames  # (1, H, W) uint8, a synthetic frame
    if model.config.frame_size:  # the package holds the network: frames arrive at its working scale
        import torch

        from ..inference.ultrasound import to_working_scale

        scaled = to_working_scale(torch.from_numpy(frames[:, None].astype(np.float32)), model.config.frame_size)
        frames = scaled[:, 0].round().clamp(0, 255).numpy().astype(np.uint8)
    organ = meta.get("organ", "organ")
    test_in = frames[:, None].astype(np.float32)
    test_out = predict_probabilities(model, frames)[:, None]
    step = 2 ** (model.config.levels - 1)
    weights = _weights(model, test_in, ("unet_from_fields", _fields(model)), work)
    return _description(
        name=f"napari-mousesegment {name}", meta=meta, folder=folder, work=work, weights=weights,
        description=f"Fetal-mouse ultrasound {organ} segmentation: a {meta.get('arch', '')} U-Net of "
                    "napari-mousesegment, one probability channel.",
        tags=["ultrasound", "fetal-mouse", organ, "unet", "2d", "semantic-segmentation", "pytorch", "napari"],
        test=(test_in, test_out), channels=("grey", [organ]), step=step,
        pre=[ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=1 / 255, offset=0.0))], post=[SigmoidDescr()],
        readme=_unet_readme(name, meta), cover=(frames[0], test_out[0, 0]),
        cite=[(("Automated mouse organ segmentation in fetal ultrasound: the U-Net report behind "
               "napari-mousesegment's hearts, livers and placentas"), HOMEPAGE)],
    )


def _mosnet_description(model, meta: dict, name: str, folder: Path, work: Path, condition: str) -> Any:
    import torch
    from bioimageio.spec.model.v0_5 import (
        ClipDescr,
        ClipKwargs,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        SigmoidDescr,
    )

    from ..data.phantom_ct import ct_phantom
    from ..inference.ct import slice_probabilities
    from ..models.mosnet import ConditionedMOSnet
    from ..models.preprocess import fit_square, to_slices, window

    config = model.config
    if config.position:  # a package's consumers feed the slice alone, not where it lies in the scan
        raise ValueError(f"{folder}: a MOSnet that reads each slice's position (--slice-position) cannot be "
                         "exported to bioimage.io yet; export one trained without it")
    if config.context:  # a package's consumers feed one slice; a 2.5D model needs its neighbours
        raise ValueError(f"{folder}: a 2.5D MOSnet ({config.context} neighbouring slices each side) cannot be "
                         "exported to bioimage.io yet; export a 2D one (trained with --context-slices 0)")
    # A package's consumers see one slice: a multi-planar model (one network, trained on every plane's
    # slices) is packaged as its reading of its first plane (axial when it has it); the fusion of the
    # planes is our predictor's, as is the label vote.
    plane = config.planes[0]
    low = config.window_level - config.window_width / 2
    phantom = ct_phantom(seed=5, condition=condition, spacing=config.spacing_mm)
    stack = to_slices(phantom.image, plane)
    mid = window(np.asarray(stack[len(stack) // 2], np.float32), config.window_level, config.window_width)
    fitted = fit_square(torch.from_numpy(mid)[None, None], config.image_size, "bilinear")[0, 0].numpy()
    hu = (fitted * config.window_width + low).astype(np.float32)[None]  # a model-grid slice in HU
    test_out = slice_probabilities(model, hu, condition)  # (1, M, S, S)
    test_in = hu[:, None]
    kwargs = _fields(model)  # "annotated" included: older configs derive it from their training summary
    net = ConditionedMOSnet(condition, **kwargs)
    net.load_state_dict(model.state_dict())  # the same keys: the condition adds no weights
    weights = _weights(net, test_in, ("ConditionedMOSnet", {"condition": condition, **kwargs}), work)
    organs = list(config.organs)
    return _description(
        name=f"napari-mousesegment {name} {condition}", meta=meta, folder=folder, work=work, weights=weights,
        description=f"Whole-body mouse micro-CT multi-organ segmentation (MOSnet, {condition} scans): one "
                    f"probability channel per organ ({', '.join(organs)}) for one {plane} slice in HU."
                    + (f" The network was trained on {config.plane} slices; napari-mousesegment averages those "
                       "planes' probabilities, this package reads one." if len(config.planes) > 1 else ""),
        tags=["micro-ct", "mouse", "multi-organ", "mosnet", "2d", "semantic-segmentation", "pytorch", "napari"],
        test=(test_in, test_out), channels=("hu", organs), step=2 ** config.depth,
        pre=[ClipDescr(kwargs=ClipKwargs(min=low, max=low + config.window_width)),
             ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=1 / config.window_width, offset=-low / config.window_width))],
        post=[SigmoidDescr()], readme=_mosnet_readme(name, meta, condition, low, plane),
        cover=(mid, test_out[0].max(0)),
        cite=[(("Wang K, Chen C, Xiao Y, Meng R, Wang L. A novel MOSnet model for multi-object segmentation of "
               "medical images in micro-computed tomography. Biomedical Engineering (2025)."), MOSNET_DOI)],
        condition=condition,
    )


def _description(*, name: str, meta: dict, folder: Path, work: Path, weights: Any, description: str,
                 tags: list[str], test: tuple[np.ndarray, np.ndarray], channels: tuple[str, list[str]], step: int,
                 pre: list, post: list, readme: str, cover: tuple[np.ndarray, np.ndarray],
                 cite: list[tuple[str, str]], condition: str | None = None) -> Any:
    """The model description shared by both kinds: (batch, channel, y, x) in, the same out."""
    import tifffile
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        Doi,
        FileDescr,
        HttpUrl,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
    )

    test_in, test_out = test
    np.save(work / "test_input.npy", test_in)
    np.save(work / "test_output.npy", test_out.astype(np.float32))
    tifffile.imwrite(work / "sample_input.tif", test_in[0])  # (channel, y, x): what a person opens
    tifffile.imwrite(work / "sample_output.tif", test_out[0].astype(np.float32))
    (work / "README.md").write_text(readme)
    _cover(work / "cover.png", *cover)
    shutil.copy2(folder / CONFIG, work / CONFIG)
    shutil.copy2(folder / WEIGHTS, work / WEIGHTS)
    source, target = TensorId("image"), TensorId("probability")
    space = [AxisId("y"), AxisId("x")]
    inputs = InputTensorDescr(
        id=source, description=f"one 2D image, {channels[0]} values",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(channels[0])]),
              *(SpaceInputAxis(id=a, size=ParameterizedSize(min=step, step=step)) for a in space)],
        test_tensor=FileDescr(source=work / "test_input.npy"),
        sample_tensor=FileDescr(source=work / "sample_input.tif"), data=IntervalOrRatioDataDescr(type="float32"),
        preprocessing=pre)
    outputs = OutputTensorDescr(
        id=target, description="probability per organ, after the sigmoid",
        axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(_identifier(o)) for o in channels[1]]),
              *(SpaceOutputAxis(id=a, size=SizeReference(tensor_id=source, axis_id=a)) for a in space)],
        test_tensor=FileDescr(source=work / "test_output.npy"),
        sample_tensor=FileDescr(source=work / "sample_output.tif"),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)), postprocessing=post)
    ours = {"model": folder.name, "kind": meta.get("kind"), "version": str(meta.get("version", "")),
            "sha256": meta.get("sha256"), "condition": condition}
    return ModelDescr(
        name=name, description=description,
        authors=[Author(name="napari-mousesegment developers")],
        cite=[CiteEntry(text=text, doi=Doi(ref)) if ref.startswith("10.") else CiteEntry(text=text, url=HttpUrl(ref))
              for text, ref in cite],
        license=LicenseId(meta.get("license", "BSD-3-Clause")), tags=tags,
        documentation=FileDescr(source=work / "README.md"), covers=[FileDescr(source=work / "cover.png")], git_repo=HttpUrl(HOMEPAGE),
        attachments=[FileDescr(source=work / CONFIG), FileDescr(source=work / WEIGHTS)],
        inputs=[inputs], outputs=[outputs], weights=weights, config={CONFIG_KEY: ours},
    )


def _identifier(text: str) -> str:
    """A channel name bioimage.io accepts (letters, digits, '_')."""
    out = "".join(c if c.isalnum() else "_" for c in text)
    return out if out[:1].isalpha() else f"c_{out}"


def _cover(path: Path, image: np.ndarray, probability: np.ndarray) -> None:
    """A 2:1 cover: the test input beside its probability."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input")
    axes[1].imshow(image, cmap="gray")
    axes[1].imshow(np.ma.masked_less(probability, 0.5), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
    axes[1].set_title("probability > 0.5")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_NOT_IN_PACKAGE = """
## What this package does not do

The bioimage.io format describes tensors in and out. These steps of napari-mousesegment cannot be
written in it, so a consumer that runs the package alone (deepImageJ, bioimageio.core, ilastik)
stops at the probability map:

{steps}

napari-mousesegment does all of them: `mousesegment models import` this zip, then
`mousesegment predict ...` or the napari widgets.
"""


def _threshold_rule(meta: dict) -> str:
    """How a U-Net's threshold was chosen, from its training settings."""
    from ..training.thresholds import recorded_rule

    target = meta.get("training", {}).get("settings", {}).get("precision_target")
    if target is not None:
        return f"as the lowest reaching precision {target}"
    return "for the largest Dice" if recorded_rule(meta) == "dice" else "for precision (largest F0.5)"


def _unet_readme(name: str, meta: dict) -> str:
    resize = ([f"- resizing each frame so that its longer side is {meta['frame_size']} px before the network "
               "(bilinear), and the logits back to the frame's size after it;"] if meta.get("frame_size") else [])
    steps = "\n".join([
        *resize,
        f"- the probability threshold chosen on validation data {_threshold_rule(meta)} ({meta.get('threshold', 0.5)});",
        (f"- separating touching organs into instances (hole filling, pieces under {meta.get('min_size', 30)} "
        "pixels dropped, distance-transform watershed);"),
        "- grey values that are not 8-bit: the plugin scales other types by their own range;",
        "- splitting 35-frame composites into frames, and writing ImageJ RoiSets per organ that land on their frames.",
    ])
    return (f"# {name}\n\nA U-Net ({meta.get('arch')}, width {meta.get('width')}) that segments fetal-mouse "
            f"**{meta.get('organ')}** in 2D ultrasound frames, exported by napari-mousesegment.\n\n"
            "Input: one 8-bit grey frame (values 0-255 as float32), any height and width that are multiples "
            "of the size step. Preprocessing divides by 255. Output: the organ's probability (sigmoid).\n"
            + _NOT_IN_PACKAGE.format(steps=steps) + _training(meta) + f"\nSource: {HOMEPAGE}\n")


def _mosnet_readme(name: str, meta: dict, condition: str, low: float, plane: str) -> str:
    steps = "\n".join([
        (f"- resampling the scan to the model's isotropic {meta.get('spacing_mm')} mm voxels, cutting "
        f"{plane} slices, padding each to a square and resizing it to {meta.get('image_size')} px;"),
        *([f"- the slices of the other planes it was trained on ({meta.get('plane')}) and the mean of the "
           "planes' probabilities;"] if plane != meta.get("plane") else []),
        ("- the label vote: each voxel gets the organ whose probability most exceeds that organ's threshold "
        f"(thresholds: {meta.get('thresholds') or 'all 0.5'});"),
        "- resampling labels back onto the scan's grid and writing them in its geometry (NIfTI, TIFF);",
        "- organ volumes in mm³, and the other condition (a second package).",
    ])
    return (f"# {name} ({condition})\n\nMOSnet (Wang et al. 2025, doi:{MOSNET_DOI}) for whole-body mouse micro-CT, "
            f"with its condition fixed to **{condition}** scans. Organs: {', '.join(meta.get('organs', []))}.\n\n"
            f"Input: one slice in Hounsfield units. Preprocessing clips to [{low:g}, "
            f"{low + meta.get('window_width', 1000):g}] HU and scales to [0, 1] (window level "
            f"{meta.get('window_level')}, width {meta.get('window_width')}). Output: one probability per organ.\n"
            + _NOT_IN_PACKAGE.format(steps=steps) + _training(meta) + f"\nSource: {HOMEPAGE}\n")


def _training(meta: dict) -> str:
    """The README's training and validation sections, from what config.json recorded."""
    import json

    about = meta.get("description") or "No description was recorded."
    scores = meta.get("test_scores")
    validation = (f"Scores on held-out data, as recorded when the model was trained:\n\n```json\n"
                  f"{json.dumps(scores, indent=2)}\n```\n" if scores else
                  "No held-out scores were recorded for this model; measure it on your own annotated data.\n")
    return (f"\n## Training\n\n{about}\n\nVersion {meta.get('version')} of {meta.get('created', 'an unknown date')}. "
            "The full record is in the attached `config.json`.\n\n## Validation\n\n" + validation)
