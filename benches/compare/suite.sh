#!/usr/bin/env bash
# The speed suite of issue #14 in one command: xlayer (benches/suite.rs) and
# JAX 0.12 interleaved in one run, ratios per round (see suite.py).
#
#   benches/compare/suite.sh                         # the pinned plugin vs JAX 0.12, 5 rounds
#   SUITE_PLUGINS=cpu,cpu-zml,cpu-lammps benches/compare/suite.sh --jax-hlo
#   benches/compare/suite.sh --rounds 3 --entries cnn_b32,cnn_b256
#
# JAX_VENV: a Python 3.12 venv with jax 0.12, flax and optax (created at
# benches/compare/.venv-jax012 when unset and missing; PYTHON312 names the
# interpreter to create it with, default python3.12).
# SUITE_PLUGINS: comma-separated xla-build recipe names (cpu, cpu-zml,
# cpu-lammps; each fetched on first use) or NAME=/path/plugin.so.
# SUITE_MINILM=1: also the MiniLM entries (batch 1, 8, 24; builds the minilm
# example, fetches the model; xlayer on every plugin of SUITE_PLUGINS).
# Further arguments go to suite.py (--rounds, --calls, --entries, --jax-hlo,
# --variant NAME=FLAGS, --minilm BIN, --json OUT).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
venv="${JAX_VENV:-$here/.venv-jax012}"
if ! "$venv/bin/python" -c 'import jax, flax, optax; assert jax.__version__.startswith("0.12")' 2>/dev/null; then
    echo "creating $venv with jax 0.12, flax, optax (CPU)..." >&2
    "${PYTHON312:-python3.12}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "jax==0.12.*" flax optax
fi
cd "$root"
server="$(cargo bench --bench suite --no-run --message-format=json 2>/dev/null \
    | "$venv/bin/python" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "suite" and m.get("executable"):
        print(m["executable"])')"
[ -x "$server" ] || { echo "could not build benches/suite.rs (run: cargo bench --bench suite --no-run)" >&2; exit 1; }
plugins=()
IFS=',' read -ra names <<< "${SUITE_PLUGINS:-cpu}"
for n in "${names[@]}"; do
    case "$n" in
        *=*) plugins+=(--plugin "$n") ;;
        *) plugins+=(--plugin "$n=$(cargo run -q -p xla-build -- path "$n")") ;;
    esac
done
minilm=()
if [ "${SUITE_MINILM:-0}" = 1 ]; then
    cargo build --release --example minilm >&2
    minilm=(--minilm "$root/target/release/examples/minilm" --minilm-dir "$(cargo run -q -p xla-build -- path minilm)")
fi
cd "$here"
exec "$venv/bin/python" suite.py --server "$server" "${plugins[@]}" "${minilm[@]}" "$@"
