"""The napari plugin: npe2 readers, writers and sample data, layer builders, and the widgets.

The only package that imports napari, Qt, magicgui or superqt (import-linter checks it).
"""
