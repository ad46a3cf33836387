#!/usr/bin/env bash
# Train the built-in models on synthetic data and install them in the package (about 1.5 CPU-hours
# on 2 cores; minutes on a GPU). Each training script resumes or skips what is already done.
#   MOSnet: the joint native + contrast model of experiments/mosnet_synthetic.sh (width 8, 30 epochs)
#   U-Nets: heart, liver and placenta of experiments/unet_synthetic.sh (width 8, <= 40 + 5 epochs)
# Usage: bash experiments/ship_weights.sh CT_WORK US_WORK
set -euo pipefail
ct=${1:?CT work folder}; us=${2:?ultrasound work folder}
here=$(dirname "$0")
EXPERIMENT=joint bash "$here/mosnet_synthetic.sh" "$ct" 30 45
bash "$here/unet_synthetic.sh" "$us" 40 40
python "$here/ship_weights.py" "$ct" "$us"
