"""Talking to a lab server (``mousesegment serve``) from the CLI and napari: the HTTP client and the outbox."""
