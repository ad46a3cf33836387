"""The lab server, ``mousesegment serve``: the queue, the model store and the retraining worker
behind an HTTP API with users and roles (needs the ``server`` extra)."""
