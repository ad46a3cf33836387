"""Active learning: the queue of corrections, what to correct next, and retraining rounds."""
