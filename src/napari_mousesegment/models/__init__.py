"""Networks (MOSnet, the U-Nets), their preprocessing, and the model-folder format.

The network modules import torch; :mod:`.folder` reads configs without it, so looking a model up
by name (``store``) stays light.
"""
