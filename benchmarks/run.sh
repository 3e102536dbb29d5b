#!/usr/bin/env bash
# Reproduce docs/benchmarks.md on this machine (fp32 unless noted, all cores; about 25 minutes on 2 cores).
# `uniformer bench` runs every (model, path) in a fresh subprocess; benchmarks/paired.py interleaves the paths of one
# model round by round, which is what the speed-up ratios in the docs come from (robust to a noisy machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=benchmarks/results
mkdir -p $OUT
.venv/bin/uniformer bench uniformer_small uniformer_xxs uniformer_xs --peers --paths baseline,eager,fast,fast-bf16 \
    --iters 5 --output-dir $OUT/image
.venv/bin/uniformer bench uniformer_video_small uniformer_video_xxs --paths baseline,eager,fast,fast-bf16 \
    --batch-size 4 --iters 3 --output-dir $OUT/video
for m in uniformer_small uniformer_xxs uniformer_xs; do
    $PY benchmarks/paired.py $m --rounds 7 --json $OUT/paired_${m}_inference.json
done
$PY benchmarks/paired.py uniformer_video_small --batch-size 4 --rounds 5 --json $OUT/paired_video_small_inference.json
$PY benchmarks/paired.py uniformer_small --train --rounds 5 --json $OUT/paired_uniformer_small_train.json
