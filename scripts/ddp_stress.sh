#!/usr/bin/env bash
# Runs the DDP tests (tests/train/test_ddp.py: 2-process gloo runs under torchrun) N times in a row while the machine
# is loaded, and reports how many runs passed. Not part of CI: it is the evidence that distributed runs exit cleanly
# (issue 9: rank 0 could abort at exit, "terminate called without an active exception", when its gloo worker
# threads were slowed down by a busy machine).
#
#   scripts/ddp_stress.sh [N]          N runs (default 50); each takes 20-40 s on 2 busy cores
#
# Environment: PYTHON (default .venv/bin/python, else python3); LOAD, the number of CPU-bound processes started as
# load for the whole run and stopped at the end (default 1); KEEP, a folder for the logs of failed runs (default
# a new temporary folder). Core dumps of aborted ranks land in the runs' temporary folders when `ulimit -c` allows.
# Exit status: 0 when every run passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
N=${1:-50}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOAD=${LOAD:-1}
KEEP=${KEEP:-$(mktemp -d -t fastvae-ddp-stress.XXXXXX)}
mkdir -p "$KEEP"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1

hogs=()
stop_load() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; hogs=(); }
trap stop_load EXIT
trap 'stop_load; exit 130' INT TERM
for _ in $(seq "$LOAD"); do
    "$PYTHON" -c "while True: pass" &
    hogs+=($!)
done

echo "ddp_stress: $N runs of tests/train/test_ddp.py with $LOAD CPU-bound load process(es); python $PYTHON; logs of failures in $KEEP"
pass=0 fail=0 start=$SECONDS
for i in $(seq "$N"); do
    t0=$SECONDS
    log="$KEEP/run$i.log"
    if timeout 900 "$PYTHON" -m pytest -q -x -p no:cacheprovider tests/train/test_ddp.py >"$log" 2>&1; then
        pass=$((pass + 1)); rm -f "$log"; what=ok
    else
        fail=$((fail + 1))
        what="FAILED ($(grep -m1 -oE 'terminate called[^\\]*|exitcode *: *-?[0-9]+[^\\]*|[0-9]+ failed' "$log" || echo "see $log"))"
    fi
    echo "run $i/$N: $what in $((SECONDS - t0)) s"
done
stop_load
echo "ddp_stress: $pass passed, $fail failed of $N runs in $((SECONDS - start)) s (load: $LOAD process(es))"
[ "$fail" -eq 0 ]
