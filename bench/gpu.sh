#!/usr/bin/env bash
# GPU runbook: on a CUDA machine with no network (torch with CUDA preinstalled, nvcc on the PATH), in one call
# that fits in 10 minutes:
#   1. builds the CUDA extension in place (FASTVAE_CUDA=1 python setup.py build_ext --inplace),
#   2. runs the CUDA tests (pytest -m cuda), compute-sanitizer memcheck and racecheck over a small subset, then the
#      rest of the tests,
#   3. runs the benchmark on the GPU (float32 all modes, the drop-ins and the per-call overhead among them; the peak
#      memory of a training step at batch 65536; then bfloat16 forward/backward of the Gaussian ops while time is
#      left),
#   4. writes everything into one folder.
# The folder: bench/results/gpu-<date>/ when $OUT is unset; when $OUT is set (the device tool, which returns at
# most 8 files from $OUT), the folder is built under /tmp and $OUT receives it as one .tar.gz plus copies of
# results.md, results.csv and the log. Unpack the tarball into bench/results/ and commit it with a README.
#
# Usage: bash bench/gpu.sh            (env: PYTHON, TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16),
#                                      BUDGET_S total seconds (default 570), OUT)
# DRY_RUN=1 checks the runbook's flow on a CPU machine: CPU build, tests, `--quick` CPU benchmark.
# Optional extra providers (POT, geomloss, pykeops) travel as wheels in .whl/ and are installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y%m%d-%H%M)
NAME=gpu-$STAMP
if [ -n "${OUT:-}" ]; then WORK=/tmp/fastvae-$NAME; else WORK=bench/results/$NAME; fi
mkdir -p "$WORK"
LOG=$WORK/gpu.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
STATUS=0

package() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    for f in results.md results.csv; do [ -f "$WORK/bench/$f" ] && cp "$WORK/bench/$f" "$OUT/$f"; done
    cp "$LOG" "$OUT/gpu.log" 2>/dev/null
    tar czf "$OUT/fastvae-$NAME.tar.gz" -C "$(dirname "$WORK")" "$(basename "$WORK")"
    echo "packed $OUT/fastvae-$NAME.tar.gz"
  fi
}

step "environment"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  nvcc --version | tail -2
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} | tee "$WORK/env.txt"
DRY=${DRY_RUN:-0}
DEV=cuda; CUDA_FLAG=1; QUICK=
if [ "$DRY" = 1 ]; then DEV=cpu; CUDA_FLAG=0; QUICK=--quick; echo "DRY_RUN=1: CPU build and a --quick CPU benchmark"; fi
if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch: this runbook is for a GPU machine"; package; exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  step "installing carried wheels (.whl/) into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build the CUDA extension in place"
export FASTVAE_CUDA=$CUDA_FLAG TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! timeout 300 "$PY" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log"; echo "BUILD FAILED (full log: build.log)"; package; exit 1
fi
tail -3 "$WORK/build.log"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import fastvae; i = fastvae._C.build_info(); print(i); assert i['cuda'] or '$DRY' == '1', 'built without CUDA'" || { package; exit 1; }

step "CUDA tests (pytest -m cuda)"
timeout 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests --junitxml="$WORK/tests-cuda.xml" 2>&1 | tail -25
rc=${PIPESTATUS[0]}; echo "pytest -m cuda: exit $rc (5 = no CUDA test collected)"; [ "$rc" = 0 ] || STATUS=1

# compute-sanitizer over a small subset (every family's forward and backward once, small sizes): memcheck for
# out-of-bounds and misaligned accesses, racecheck for shared-memory hazards (the CPU execution of the CUDA sources
# in `make test` has its own race detector: tests/cuda_on_cpu; compare what each finds)
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
SUBSET="tests/ops/test_gaussian_cuda.py::test_likelihoods_and_kl_match_cpu tests/ops/test_dropin_cuda.py::test_kl_normal_normal tests/ops/test_dropin_cuda.py::test_nn_functional_losses tests/ops/test_cuda_graphs.py::test_mmd_prior_samples_same_on_cuda_and_cpu tests/ops/test_cuda_graphs.py::test_sort_ties_give_the_cpu_permutation"
if [ "$DRY" != 1 ] && [ -n "$SAN" ] && [ "$(left)" -gt 360 ]; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer --tool $tool over a subset (time left $(left) s)"
    timeout 75 "$SAN" --tool $tool --error-exitcode 99 --target-processes all "$PY" -m pytest -q -x -p no:cacheprovider \
      $SUBSET >"$WORK/sanitizer-$tool.log" 2>&1
    rc=$?; tail -8 "$WORK/sanitizer-$tool.log"
    echo "compute-sanitizer $tool: exit $rc (99 = errors found, 124 = stopped at 75 s)"; [ "$rc" = 0 ] || STATUS=1
  done
else
  echo "compute-sanitizer: not run (DRY_RUN, not found, or under 360 s left)"
fi

step "the other tests (pytest -m 'not cuda')"
t=$(( $(left) > 400 ? 120 : 60 ))
timeout $t "$PY" -m pytest -q -m "not cuda" -p no:cacheprovider tests --junitxml="$WORK/tests-rest.xml" 2>&1 | tail -15
rc=${PIPESTATUS[0]}; echo "pytest -m 'not cuda': exit $rc (124 = stopped at ${t} s)"; [ "$rc" = 0 ] || STATUS=1

step "benchmark, float32, forward/backward/full (time left $(left) s)"
# the targets first, so a run cut short still has them
OPS=vae_head,mmd,sliced_wasserstein,reparameterize_kl,gaussian_nll,vae_train_step,td_vae_loss,gaussian_nll_loss,bce_with_logits,discretized_logistic_mixture_nll,reparameterize,kl_normal,bernoulli_nll,reparameterize_tril,energy_distance,call_overhead
limit=$(( $(left) - 100 ))
timeout $(( $(left) - 25 )) "$PY" -m fastvae.bench --device $DEV $QUICK --dtype float32 --mode forward,backward,full \
  --budget 0.2 --ops $OPS --time-limit $limit --out "$WORK/bench" >/dev/null
echo "bench exit $?"
[ -f "$WORK/bench/results.md" ] && sed -n '1,60p' "$WORK/bench/results.md"

if [ "$DRY" != 1 ] && [ "$(left)" -gt 120 ]; then
  step "peak memory of a training step at batch 65536 (max allocated; time left $(left) s)"
  timeout 90 "$PY" -m fastvae.bench --device cuda --ops memory --budget 0.2 --out "$WORK/bench-memory" >/dev/null
  echo "memory exit $?"; [ -f "$WORK/bench-memory/results.md" ] && grep -A12 -i "peak memory" "$WORK/bench-memory/results.md" | head -30
fi

if [ "$DRY" != 1 ] && [ "$(left)" -gt 90 ]; then
  step "benchmark, bfloat16, Gaussian ops forward/backward (time left $(left) s)"
  timeout $(( $(left) - 20 )) "$PY" -m fastvae.bench --device cuda --dtype bfloat16 --mode forward,backward \
    --budget 0.2 --ops vae_head,reparameterize_kl,gaussian_nll,reparameterize,kl_normal,bernoulli_nll \
    --providers fastvae,eager,compile --no-targets --time-limit $(( $(left) - 60 )) --out "$WORK/bench-bf16" >/dev/null
  echo "bench bf16 exit $?"
fi

step "done in $(( $(date +%s) - T0 )) s; results in $WORK"
package
exit $STATUS
