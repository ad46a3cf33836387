"""bioimage.io packages as another lab would write them, made with bioimageio.spec for the import tests.

Each is a tiny TorchScript network (a 3x3 smoothing convolution, or its 3D twin) with its own
preprocessing (zero mean, unit variance per sample) and a sigmoid, so that running it through our
pipeline must apply steps of the package that our own models never use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Smooth(torch.nn.Module):
    """Mean of a 3x3 (or 3x3x3) neighbourhood, minus 0.5: a 'segmentation' of bright regions."""

    def __init__(self, dims: int = 2, channels_in: int = 1) -> None:
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.conv = conv(channels_in, 1, 3, padding=1, bias=True)
        torch.nn.init.constant_(self.conv.weight, 1.0 / (3 ** dims * channels_in))
        torch.nn.init.constant_(self.conv.bias, -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def expected(data: np.ndarray, dims: int = 2) -> np.ndarray:
    """What the package computes for one (y, x) or (z, y, x) array: normalise, smooth, sigmoid."""
    x = torch.from_numpy(((data - data.mean()) / (data.std() + 1e-6)).astype(np.float32))[None, None]
    with torch.no_grad():
        return torch.sigmoid(Smooth(dims)(x))[0, 0].numpy()


def foreign_package(folder: Path, *, dims: int = 2, channels: int = 1, formats=("torchscript",),
                    time_axis: bool = False, name: str = "Heart smoother from another lab") -> Path:
    """Write ``folder/<stem>.zip``: a valid bioimage.io 0.5 model package that is not ours."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        PytorchStateDictWeightsDescr,
        SigmoidDescr,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TimeInputAxis,
        TimeOutputAxis,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
        ZeroMeanUnitVarianceDescr,
        ZeroMeanUnitVarianceKwargs,
    )

    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "work"
    work.mkdir(exist_ok=True)
    space = ["z", "y", "x"][-dims:]
    shape = [1, channels] + [8] * (dims == 3) + [48, 40]
    rng = np.random.default_rng(0)
    test_in = rng.normal(100, 20, shape).astype(np.float32)
    net = Smooth(dims, channels).eval()
    norm = (test_in - test_in.mean()) / (test_in.std() + 1e-6)
    with torch.no_grad():
        test_out = torch.sigmoid(net(torch.from_numpy(norm.astype(np.float32)))).numpy()
    if time_axis:  # a time series model: (batch, time, channel, y, x)
        test_in, test_out = test_in[:, None], test_out[:, None]
    np.save(work / "in.npy", test_in)
    np.save(work / "out.npy", test_out)
    (work / "README.md").write_text("# A model from another lab\n\nSmooths and squashes.\n")
    inp, out = TensorId("raw"), TensorId("mask")
    in_axes = [BatchAxis(), *([TimeInputAxis(size=1)] if time_axis else []),
               ChannelAxis(channel_names=[Identifier(f"c{k}") for k in range(channels)]),
               *(SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=8, step=8)) for a in space)]
    out_axes = [BatchAxis(), *([TimeOutputAxis(size=1)] if time_axis else []),
                ChannelAxis(channel_names=[Identifier("mask")]),
                *(SpaceOutputAxis(id=AxisId(a), size=SizeReference(tensor_id=inp, axis_id=AxisId(a)))
                  for a in space)]
    weights = {}
    version = Version(torch.__version__.split("+")[0])
    if "torchscript" in formats:
        torch.jit.script(net).save(str(work / "model.ts"))
        weights["torchscript"] = TorchscriptWeightsDescr(source=work / "model.ts", pytorch_version=version)
    if "pytorch_state_dict" in formats:
        torch.save(net.state_dict(), work / "state.pt")
        (work / "arch.py").write_text(Path(__file__).read_text())
        weights["pytorch_state_dict"] = PytorchStateDictWeightsDescr(
            source=work / "state.pt", pytorch_version=version,
            architecture=ArchitectureFromFileDescr(source=work / "arch.py", callable=Identifier("Smooth"),
                                                   kwargs={"dims": dims, "channels_in": channels}))
    descr = ModelDescr(
        name=name, description="a smoothing filter packaged like a segmentation model",
        authors=[Author(name="Another Lab")], cite=[CiteEntry(text="Another Lab 2026", url="https://example.org")],
        license=LicenseId("MIT"), documentation=FileDescr(source=work / "README.md"), tags=["segmentation"],
        inputs=[InputTensorDescr(id=inp, axes=in_axes, test_tensor=FileDescr(source=work / "in.npy"),
                                 data=IntervalOrRatioDataDescr(type="float32"),
                                 preprocessing=[ZeroMeanUnitVarianceDescr(kwargs=ZeroMeanUnitVarianceKwargs(
                                     axes=[AxisId(a) for a in space], eps=1e-6))])],
        outputs=[OutputTensorDescr(id=out, axes=out_axes, test_tensor=FileDescr(source=work / "out.npy"),
                                   postprocessing=[SigmoidDescr()])],
        weights=WeightsDescr(**weights),
    )
    target = folder / f"{name.lower().replace(' ', '-')}-{dims}d-{channels}c.zip"
    save_bioimageio_package(descr, output_path=target)
    return target


def foreign_package_v0_4(folder: Path) -> Path:
    """A 2D package in format 0.4, as much of the BioImage Model Zoo still is: rdf.yaml by hand,
    axes as a string, a parameterized input shape and an implicit output shape."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    test_in = rng.normal(100, 20, (1, 1, 64, 48)).astype(np.float32)
    net = Smooth(2).eval()
    norm = (test_in - test_in.mean()) / (test_in.std() + 1e-6)
    with torch.no_grad():
        test_out = torch.sigmoid(net(torch.from_numpy(norm.astype(np.float32)))).numpy()
    files = {"test_input.npy": test_in, "test_output.npy": test_out}
    rdf = f"""format_version: 0.4.10
type: model
name: Old-format heart model
description: a smoothing filter in the 0.4 format
authors: [{{name: Another Lab}}]
cite: [{{text: Another Lab 2024, url: "https://example.org"}}]
license: MIT
documentation: README.md
tags: [segmentation, heart]
timestamp: "2024-01-01T00:00:00"
test_inputs: [test_input.npy]
test_outputs: [test_output.npy]
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    data_range: [-.inf, .inf]
    shape: {{min: [1, 1, 16, 16], step: [0, 0, 16, 16]}}
    preprocessing:
      - name: zero_mean_unit_variance
        kwargs: {{mode: per_sample, axes: xy, eps: 1.0e-06}}
outputs:
  - name: mask
    axes: bcyx
    data_type: float32
    data_range: [0, 1]
    shape: {{reference_tensor: raw, scale: [1, 1, 1, 1], offset: [0, 0, 0, 0]}}
    postprocessing:
      - name: sigmoid
weights:
  torchscript:
    source: model.ts
    pytorch_version: "{torch.__version__.split('+')[0]}"
"""
    target = folder / "old-heart.zip"
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("rdf.yaml", rdf)
        zf.writestr("README.md", "# An old-format model\n")
        for name, array in files.items():
            np.save(folder / name, array)
            zf.write(folder / name, name)
        torch.jit.script(net).save(str(folder / "model.ts"))
        zf.write(folder / "model.ts", "model.ts")
    return target
