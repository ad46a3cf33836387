"""napari widgets: thin Qt front-ends over the core; long work runs in worker threads or processes."""
