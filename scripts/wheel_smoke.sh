#!/usr/bin/env bash
# `make wheel-check`: builds the wheel with `pip wheel`, checks what it holds, installs it into a virtualenv that has
# only torch and the runtime requirements, and runs fastvae from that install, outside the checkout.
#
#   BUILD_PY  the Python that builds (has torch, setuptools, ninja): default .venv/bin/python
#   BASE_PY   the interpreter the test virtualenv is made from: default python3
#
# The build reuses the objects of the last one (build/obj, see setup.py's BuildExt): after `make build` only the
# link runs. The test virtualenv, build/wheel-venv, is kept for the next run while its torch is the build's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD_PY=${BUILD_PY:-$ROOT/.venv/bin/python}
BASE_PY=${BASE_PY:-python3}
OUT=$ROOT/build/wheel
VENV=$ROOT/build/wheel-venv
t0=$SECONDS

# build/lib* would carry files of an earlier build into the wheel (a module deleted since, say)
rm -rf build/lib.* build/bdist.* "$OUT"
MAX_JOBS=${MAX_JOBS:-2} "$BUILD_PY" -m pip wheel . --no-build-isolation --no-deps -q -w "$OUT"
wheels=("$OUT"/*.whl)
[ ${#wheels[@]} = 1 ] || { echo "wheel-check: expected one wheel in $OUT, found ${wheels[*]}"; exit 1; }
wheel=${wheels[0]}
"$BUILD_PY" scripts/wheel_check.py contents "$wheel"
t_build=$((SECONDS - t0))

# The extension loads only under the torch it was built with: the test virtualenv gets that torch. A torch of the
# base interpreter's own site (a system CUDA build, say) is seen through --system-site-packages, provided that site
# has no fastvae; otherwise the same version is installed from the package index (a CPU build stays one).
torch_version=$("$BUILD_PY" -c 'import torch; print(torch.__version__)')
# (only a base interpreter's site: a virtualenv made from a virtualenv's Python sees the base's, not that one's)
base_torch=$(cd /tmp && "$BASE_PY" -c 'import sys, torch; print(torch.__version__ if sys.prefix == sys.base_prefix else "")' \
  2>/dev/null || true)
if [ "$base_torch" = "$torch_version" ]; then
  if (cd /tmp && "$BASE_PY" -c 'import fastvae' 2>/dev/null); then
    echo "wheel-check: $BASE_PY can import a fastvae of its own; the test needs a site without one"; exit 1
  fi
  mode="system-site torch $torch_version"
else
  mode="torch $torch_version"
fi
if [ "$(cat "$VENV/.made-for" 2>/dev/null)" != "$mode" ]; then
  rm -rf "$VENV"
  if [ "$base_torch" = "$torch_version" ]; then
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==$torch_version" numpy
  fi
  echo "$mode" > "$VENV/.made-for"
fi
"$VENV/bin/python" -m pip uninstall -q -y torch-fastvae 2>/dev/null || true
# --no-index: the requirements must already be there (torch, numpy); nothing else may be needed
"$VENV/bin/python" -m pip install -q --no-index "$wheel"
got=$(cd /tmp && "$VENV/bin/python" -c 'import torch; print(torch.__version__)')
[ "$got" = "$torch_version" ] || { echo "wheel-check: $VENV has torch $got, the wheel was built with $torch_version"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && "$VENV/bin/python" -I "$ROOT/scripts/wheel_check.py" smoke "$ROOT")
echo "wheel-check: $(basename "$wheel") built and checked in ${t_build} s, all in $((SECONDS - t0)) s"
