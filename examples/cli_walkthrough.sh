#!/usr/bin/env bash
# The whole flow from the command line, on a folder with one sub-folder per class.
#   bash examples/cli_walkthrough.sh DATA_DIR [WEIGHTS_FILE]
# Without WEIGHTS_FILE, Keras downloads its ImageNet VGG16 weights (internet needed once).
set -euo pipefail
data=${1:?usage: cli_walkthrough.sh DATA_DIR [WEIGHTS_FILE]}
weights=(); [[ $# -ge 2 ]] && weights=(--weights "$2" --preprocess torch)   # torchvision-trained file
run=models/walkthrough

tlearn fit "$data" --out "$run" --image-size 160 "${weights[@]}"   # 160 px: ~3x faster on a CPU
tlearn finetune "$run" --unfreeze 4 --epochs 5                      # train block5 too
tlearn evaluate "$run"                                              # test split: table + report/
first_image=$(find "$data" -type f -name '*.jp*g' | head -n 1)
tlearn predict "$first_image" --model "$run" --top-k 2
tlearn predict "$data" --model "$run" --format csv > "$run/predictions.csv"
echo "Report: $run/report/  Predictions: $run/predictions.csv"
