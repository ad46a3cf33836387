"""Headless pipelines and their on-disk output contracts: predict, evaluate, report, batch, demo.

The CLI and the widgets call these; nothing here parses arguments or imports napari.
"""
