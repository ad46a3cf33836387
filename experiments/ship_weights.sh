#!/usr/bin/env bash
# Train the built-in models on synthetic data and install them in the package (about 3 CPU-hours
# on 2 cores; minutes on a GPU). Each training script resumes or skips what is already done.
#   MOSnet: experiments/ship_mosnet.py (width 8, 30 CPU-minutes on phantoms drawn from the ellipsoid
#           model and the real label maps, scored beside the model it replaces and a plain U-Net)
#   U-Nets: heart, liver and placenta of experiments/unet_synthetic.sh (width 8, <= 40 + 5 epochs)
# Usage: bash experiments/ship_weights.sh CT_WORK US_WORK
set -euo pipefail
ct=${1:?CT work folder}; us=${2:?ultrasound work folder}
here=$(dirname "$0")
python "$here/ship_mosnet.py" --out "$ct" --minutes 30 --install
bash "$here/unet_synthetic.sh" "$us" 40 40
python "$here/ship_weights.py" "$us"
