#!/usr/bin/env bash
# JAX side of the dispatch benchmark (see docs/benchmarks.md).
# Creates benches/compare/.venv with CPU jax on first use, then runs
# jax_dispatch.py. Extra arguments are passed on: [N calls] [ROUNDS].
# Set JAX_VENV to use an existing venv that has jax instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${JAX_VENV:-$here/.venv}"
if ! "$venv/bin/python" -c 'import jax' 2>/dev/null; then
    echo "creating $venv with jax (CPU)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet jax
fi
exec "$venv/bin/python" "$here/jax_dispatch.py" "$@"
