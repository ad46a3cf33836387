"""Data sources: dataset folders and the synthetic phantoms.

Nothing here imports torch, napari or Qt.
"""
