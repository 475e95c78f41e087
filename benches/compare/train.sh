#!/usr/bin/env bash
# Issue #7 benchmark: xlayer train steps next to JAX + optax, back to back.
# Uses JAX_VENV (needs jax and optax) or benches/compare/.venv (created here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${JAX_VENV:-$here/.venv}"
if ! "$venv/bin/python" -c 'import jax, optax' 2>/dev/null; then
    echo "creating $venv with jax and optax (CPU)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet jax optax
fi
cd "$here/../.."
cargo bench --bench train 2>/dev/null | grep '^|'
"$venv/bin/python" "$here/train_jax.py"
