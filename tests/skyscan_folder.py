"""A Bruker SkyScan (NRecon) reconstruction folder, written as NRecon lays it out, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LOG = """[System]
Scanner=Skyscan1276
Instrument S/N=17J08117
Hardware version=A
Software=Version 1. 1 (build 10)
Home directory=C:\\SkyScan1276
Source Type=Hamamatsu L10101
Camera=XIMEA xiRAY16
Camera Pixel Size (um)=   74.80
CameraXYRatio=1.0000
Incl.in lifting (um/mm)=0.0000
[User]
User Name=SKYSCAN
Computer Name=SKYSCAN1276
[Acquisition]
Data directory=D:\\Results\\{name}
Filename Prefix={name}
Configuration=Mouse bed
Number of Files=  541
Source Voltage (kV)=  70
Source Current (uA)= 200
Number of Rows=  {rows}
Number of Columns=  {columns}
Image crop origin X=   0
Image crop origin Y=   0
Camera binning=4x4
Image Rotation=0.2400
Gantry direction=CC
Image Pixel Size (um)=   {acquisition_pixel:.6f}
Object to Source (mm)=105.300
Camera to Source (mm)=286.500
Vertical Object Position (mm)=42.600
Optical Axis (line)= 972
Filter=Al 1mm
Image Format=TIFF
Depth (bits)=16
Screen LUT=0
Exposure (ms)=  410
Rotation Step (deg)=0.400
Frame Averaging=ON (2)
Random Movement=OFF (10)
Use 360 Rotation=YES
Geometrical Correction=ON
Camera Offset=OFF
Median Filtering=ON
Flat Field Correction=ON
Rotation Direction=CC
Scanning Trajectory=ROUND
Type Of Motion=STEP AND SHOOT
Study Date and Time=14 Mar 2023  10h:21m:05s
Scan duration=00h:09m:38s
[Reconstruction]
Reconstruction Program=NRecon
Program Version=Version: 1.7.4.2
Program Home Directory=C:\\Program Files\\SkyScan\\NRecon
Reconstruction engine=InstaRecon
Engine version=Version: 2.0.4.6
Reconstruction from batch=No
Option for additional F4F float format=OFF
Dataset Origin=Skyscan1276
Dataset Prefix={name}
Dataset Directory=D:\\Results\\{name}
Output Directory=D:\\Results\\{name}\\{name}_Rec
Time and Date=Mar 14, 2023  10:45:12
First Section={first}
Last Section={last}
Reconstruction duration per slice (seconds)=0.012
Total reconstruction time ({count} slices) in seconds=3.2
Postalignment=-1.50
Section to Section Step=1
Sections Count={count}
Result File Type={file_type}
Result File Header Length (bytes)=1134
Result Image Width (pixels)={columns}
Result Image Height (pixels)={rows}
{pixel_line}
Reconstruction Angular Range (deg)=360.00
Use 180+=OFF
Angular Step (deg)=0.4000
Smoothing=2
Smoothing kernel=0 (Asymmetrical boxcar)
Ring Artifact Correction=6
Draw Scales=OFF
Object Bigger than FOV=OFF
Reconstruction from ROI=OFF
Filter cutoff relative to Nyquisit frequency=100
Filter type=0
Filter type description=Hamming (Alpha=0.54)
Undersampling factor=1
Threshold for defect pixel mask (%)=0
Beam Hardening Correction (%)=30
CS Static Rotation (deg)=0.00
Minimum for CS to Image Conversion=0.000000
Maximum for CS to Image Conversion=0.042000
HU Calibration=OFF
BMP LUT=0
Cone-beam Angle Horiz.(deg)=20.196442
Cone-beam Angle Vert.(deg)=13.549611
[File name convention]
Filename Index Length=8
Filename Prefix={name}_rec
"""


def write_log(path: Path, name: str, pixel_size_um: float | str | None, rows: int, columns: int,
              first: int = 0, last: int = 0, file_type: str = "BMP") -> Path:
    """A ``NAME_rec.log`` as NRecon writes it; ``pixel_size_um=None`` leaves out ``Pixel Size (um)``."""
    pixel_line = "" if pixel_size_um is None else f"Pixel Size (um)={pixel_size_um}"
    acquisition = float(pixel_size_um) / 2 if isinstance(pixel_size_um, (int, float)) else 17.5
    path.write_text(LOG.format(name=name, rows=rows, columns=columns, first=first, last=last,
                               count=last - first + 1, file_type=file_type, pixel_line=pixel_line,
                               acquisition_pixel=acquisition), newline="\r\n", encoding="latin-1")
    return path


def write_slice(path: Path, image: np.ndarray) -> Path:
    """One slice image, by its suffix: .tif/.tiff with tifffile, others with imageio."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, image, photometric="minisblack" if image.ndim == 2 else "rgb")
    else:
        import imageio.v3 as iio

        iio.imwrite(path, image)
    return path


def write_skyscan_folder(folder: str | Path, volume_zyx: np.ndarray, pixel_size_um: float | str | None,
                         fmt: str = "bmp", name: str = "mouse", first: int = 0, digits: int = 8) -> Path:
    """A SkyScan reconstruction folder: ``NAME_rec.log`` and slices ``NAME_rec{first + z:08d}.{fmt}``.

    The acquisition section states a different (projection) pixel size on purpose, so a reader that
    takes the wrong line is caught. ``digits`` sets the width of the slice numbers.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume_zyx)
    rows, columns = volume.shape[1:3]
    write_log(folder / f"{name}_rec.log", name, pixel_size_um, rows, columns, first,
              first + len(volume) - 1, fmt.upper())
    for z, image in enumerate(volume):
        write_slice(folder / f"{name}_rec{first + z:0{digits}d}.{fmt}", image)
    return folder
