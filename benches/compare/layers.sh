#!/usr/bin/env bash
# Issue #4 benchmark: xlayer models next to jax.jit of the same functions,
# back to back on one machine. Uses benches/compare/.venv (created by run.sh
# on first use) or JAX_VENV.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${JAX_VENV:-$here/.venv}"
if ! "$venv/bin/python" -c 'import jax' 2>/dev/null; then
    echo "creating $venv with jax (CPU)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet jax
fi
cd "$here/../.."
cargo bench --bench layers 2>/dev/null | grep '^|'
"$venv/bin/python" "$here/layers_jax.py"
