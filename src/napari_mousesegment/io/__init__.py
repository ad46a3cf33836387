"""File formats: volumes, ultrasound composites and ImageJ ROIs.

Nothing here imports torch, napari or Qt, so files can be read and converted without them.
"""
