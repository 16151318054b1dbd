#!/bin/sh
# --amp: (1) the ELBO of float32 and bf16 autocast runs, two seeds each (is bf16 the same within seed noise?);
# (2) samples/s of one training step by batch size, float32 and bf16, fastvae vs eager vs pythae (the suite's
# vae_train_amp op). Run from the repository root: nice -n 10 sh bench/results/amp-20261201/run.sh
set -e
here=bench/results/amp-20261201
py=${PYTHON:-python}
: > $here/elbo.txt
for seed in 0 1; do
    for amp in none bf16; do
        $py -m fastvae train --data fashion --likelihood bernoulli --batch-size 1024 --epochs 5 --eval-k 0 \
            --threads 2 --seed $seed --amp $amp --no-progress --overwrite --out out/amp/$amp-$seed > /dev/null
        echo "$amp $seed $(cat out/amp/$amp-$seed/summary.json | tr -d '\n ')" >> $here/elbo.txt
    done
done
$py -m fastvae bench --ops vae_train_amp --device cpu --budget 1 --out $here/throughput > $here/bench.log 2>&1
