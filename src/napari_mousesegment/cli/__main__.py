"""``python -m napari_mousesegment.cli``: how the napari widget starts the retraining worker."""

import sys

from . import main

sys.exit(main())
