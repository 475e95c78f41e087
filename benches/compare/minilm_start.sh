#!/usr/bin/env bash
# Cold vs warm start of the minilm example (issue #14, "Warm start"), in one
# run: each round starts the example once with an empty compilation cache
# (cold: it compiles its programs) and WARM times with that cache filled
# (warm: it loads them), and prints each start's parts (--verbose), then
# the medians and warm / cold. The plugin's digest sidecar is copied into
# each cold folder, so the cold start does not hash the plugin file (a
# once-per-plugin cost, not a compile).
#
#   benches/compare/minilm_start.sh                  # 3 rounds, 2 sentences, 3 warm starts each
#   ROUNDS=5 WARM=5 benches/compare/minilm_start.sh "one" "two" "three"
#   MINILM_BIN=target/release/examples/minilm benches/compare/minilm_start.sh
#
# Times are the example's own (process start to the first embeddings on
# the host); the machine's load average is printed with each round.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
rounds="${ROUNDS:-3}"
warm="${WARM:-3}"
if [ "$#" -eq 0 ]; then
    set -- "A cat sits on the mat." "Un chat est assis sur le tapis."
fi
bin="${MINILM_BIN:-}"
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --release --example minilm >&2)
    bin="$root/target/release/examples/minilm"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# One start, to fetch the model and plugin and leave the plugin's digest
# sidecar in a cache folder.
XLAYER_CACHE_DIR="$work/seed" "$bin" "$@" >/dev/null
total() { sed -n 's/.*; total \([0-9]*\) ms$/\1/p'; }
cold_ms=()
warm_ms=()
for r in $(seq 1 "$rounds"); do
    echo "round $r: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    dir="$work/round$r"
    mkdir -p "$dir"
    chmod 700 "$dir"
    cp -r "$work/seed/plugins" "$dir/"
    parts="$(XLAYER_CACHE_DIR="$dir" "$bin" --verbose "$@" 2>&1 >/dev/null | grep 'start parts')"
    echo "  cold: ${parts#minilm: start parts: }"
    cold_ms+=("$(echo "$parts" | total)")
    for _ in $(seq 1 "$warm"); do
        parts="$(XLAYER_CACHE_DIR="$dir" "$bin" --verbose "$@" 2>&1 >/dev/null | grep 'start parts')"
        echo "  warm: ${parts#minilm: start parts: }"
        warm_ms+=("$(echo "$parts" | total)")
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
c="$(median "${cold_ms[@]}")"
w="$(median "${warm_ms[@]}")"
echo "cold starts (ms): ${cold_ms[*]}"
echo "warm starts (ms): ${warm_ms[*]}"
echo "median cold $c ms, median warm $w ms, warm / cold $(awk -v w="$w" -v c="$c" 'BEGIN {printf "%.1f%%", 100 * w / c}'); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
