#!/usr/bin/env bash
# Runs the xlayer kernels bench and the numpy matmul back to back and prints
# the ratio xlayer/numpy from this one run.
#
#   benches/compare/kernels.sh                 # python3 from PATH
#   PYTHON=/path/venv/bin/python benches/compare/kernels.sh
#
# numpy runs twice: with the environment as it is, then with
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (in that command only).
# threadpoolctl, when importable, names the OpenBLAS kernel each time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  nproc=$(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
cargo bench --bench kernels --no-run -q 2>/dev/null || cargo bench --bench kernels --no-run
echo "load average before xlayer: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -q --bench kernels | tee -a "$log"
echo
echo "load average before numpy (env as is): $(cut -d' ' -f1-3 /proc/loadavg)"
"$PYTHON" benches/compare/numpy_matmul.py | sed '/^RESULT /s/numpy_/numpy_env_/g' | tee -a "$log"
echo
echo "load average before numpy (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset): $(cut -d' ' -f1-3 /proc/loadavg)"
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" benches/compare/numpy_matmul.py \
  | sed '/^RESULT /s/numpy_/numpy_unset_/g' | tee -a "$log"

# key=value pairs from every RESULT line, then the ratios.
val() { grep '^RESULT ' "$log" | tr ' ' '\n' | sed -n "s/^$1=//p" | tail -1; }
x=$(val xlayer_matmul_gflops)
ne=$(val numpy_env_matmul_gflops)
nu=$(val numpy_unset_matmul_gflops)
xb=$(val xlayer_matmul_gflops_best)
neb=$(val numpy_env_matmul_gflops_best)
nub=$(val numpy_unset_matmul_gflops_best)
bare=$(val bare_us)
over=$(val overhead_us)
noise=$(val bare_noise_us)
echo
echo "## Summary (this run)"
echo
awk -v xb="$xb" -v neb="$neb" -v nub="$nub" -v x="$x" -v ne="$ne" -v nu="$nu" -v bare="$bare" -v over="$over" -v noise="$noise" 'BEGIN {
  printf "| measure | value |\n|---|---:|\n"
  printf "| dispatch floor (bare execute + block_until_ready) | %.3f µs |\n", bare
  printf "| harness overhead per run (bench() wall − bare) | %+.3f µs (%+.1f%%) |\n", over, 100 * over / bare
  printf "| bare-loop noise (max − min over rounds) | %.3f µs |\n", noise
  printf "| xlayer matmul 1024³ f32, median (fastest run) | %.1f (%.1f) GFLOP/s |\n", x, xb
  printf "| numpy matmul, env as is, median (fastest run) | %.1f (%.1f) GFLOP/s |\n", ne, neb
  printf "| numpy matmul, OPENBLAS_CORETYPE/L2_SIZE unset, median (fastest run) | %.1f (%.1f) GFLOP/s |\n", nu, nub
  printf "| ratio xlayer / numpy (env as is), median (fastest run) | %.2f (%.2f) |\n", x / ne, xb / neb
  printf "| ratio xlayer / numpy (unset), median (fastest run) | %.2f (%.2f) |\n", x / nu, xb / nub
}'
