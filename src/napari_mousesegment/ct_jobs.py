"""Kept so that scripts written as ``from napari_mousesegment.ct_jobs import predict_ct_batch`` still run.

The micro-CT jobs live in :mod:`napari_mousesegment.jobs.ct` and :mod:`napari_mousesegment.jobs.reports`.
"""

from .jobs.ct import evaluate_ct, predict_ct, predict_ct_batch, predict_ct_scan, write_labels
from .jobs.reports import compare_reports, read_per_scan, summarise

__all__ = ["compare_reports", "evaluate_ct", "predict_ct", "predict_ct_batch", "predict_ct_scan", "read_per_scan",
           "summarise", "write_labels"]
