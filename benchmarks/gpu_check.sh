#!/usr/bin/env bash
# The device check, as one prepared script: install ufm without touching the machine's JAX, run the test suite on
# the accelerator, then benchmarks/device.py. Usage: bash benchmarks/gpu_check.sh OUT_DIR [DEVICE_BUDGET_S] [TESTS]
# (TESTS: "all" (default), "none", or pytest arguments). Everything it prints also lands in OUT_DIR.
set -uo pipefail
out=${1:?OUT_DIR}
budget=${2:-300}
tests=${3:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import jax; print(jax.__version__, jax.devices())"; } 2>&1 | tee "$out/env.txt"
if [ "$tests" != "none" ]; then
  args=(); [ "$tests" != "all" ] && read -ra args <<<"$tests"
  timeout 100 python3 -m pytest -q -p no:cacheprovider -n 4 --timeout 90 "${args[@]}" 2>&1 | tail -40 | tee "$out/tests.txt"
fi
timeout $((budget + 120)) python3 benchmarks/device.py --budget "$budget" --cpu-budget 40 --tmp /tmp \
  --out "$out/device.md" 2>&1 | tail -80 | tee "$out/device_log.txt"
