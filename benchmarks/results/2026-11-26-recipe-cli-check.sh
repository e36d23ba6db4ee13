#!/bin/bash
# One check of the default recipe through the command line (issue 11): train on folder $1 with every
# default, a 4-minute --time-limit and seed $3, then score on folder $2 with `unet-fast evaluate`.
# $1 and $2 hold images/ and labels/ (here: the top and bottom 256 x 256 halves of the dev image).
# Run it in the venv unet_fast is installed in; writes models/, logs/ and eval/ here.
set -u
export OMP_NUM_THREADS=1
tag=$1-s$3
mkdir -p models logs eval
start=$(date +%s.%N)
unet-fast train --images "$1/images" --labels "$1/labels" -o "models/$tag.safetensors" --seed "$3" \
  --time-limit 4 --threads 1 --no-progress > "logs/$tag.train.log" 2>&1
echo "train_seconds $(echo "$(date +%s.%N) - $start" | bc)" >> "logs/$tag.train.log"
unet-fast evaluate -m "models/$tag.safetensors" --images "$2/images" --labels "$2/labels" -o "eval/$tag" \
  > "logs/$tag.eval.log" 2>&1
