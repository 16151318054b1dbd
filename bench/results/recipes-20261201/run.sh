#!/bin/sh
# The recipes of configs/ on Fashion-MNIST, one after another: train, then fastvae eval --k 5000 on the first
# LIMIT test images (the full 10,000 at K = 5000 take 14-16 min per model on this CPU, unloaded). Each step's wall time
# goes to times.txt, eval's JSON to <name>.json. Run from the repository root:
#   nice -n 10 sh bench/results/recipes-20261201/run.sh
set -e
here=bench/results/recipes-20261201
py=${PYTHON:-python}
for spec in iwae-k1:1000 iwae-k5:1000 iwae-k50:1000 wae-mmd:1000 swae:1000; do
    name=${spec%%:*}; limit=${spec##*:}
    t0=$(date +%s)
    $py -m fastvae train --config configs/$name.toml --overwrite --no-progress > $here/$name.train.log 2>&1
    t1=$(date +%s)
    $py -m fastvae eval out/recipes/$name --k 5000 --limit $limit --json --no-progress \
        --per-image $here/$name.logp.npy > $here/$name.json
    t2=$(date +%s)
    echo "$name train_s $((t1 - t0)) eval_s $((t2 - t1)) limit $limit" >> $here/times.txt
    cp out/recipes/$name/summary.json $here/$name.summary.json
    cp out/recipes/$name/metrics.csv $here/$name.metrics.csv
done
