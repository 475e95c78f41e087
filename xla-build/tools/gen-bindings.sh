#!/usr/bin/env bash
# Regenerates src/pjrt/sys.rs from the pjrt_c_api.h shipped in the pinned CPU
# plugin wheel (xla-cpu-pjrt 0.0.1, PJRT C API 0.81). Needs bindgen-cli and
# libclang (apt-get install libclang-dev; cargo install bindgen-cli).
#   usage: xla-build/tools/gen-bindings.sh path/to/pjrt_c_api.h
set -euo pipefail
header=${1:?path to pjrt_c_api.h}
out=$(git rev-parse --show-toplevel)/src/pjrt/sys.rs
bindgen "$header" \
  --allowlist-type 'PJRT_.*' --allowlist-var 'PJRT_.*' \
  --default-enum-style newtype --no-doc-comments --use-core \
  -o "$out"
rustfmt --edition 2021 "$out"
echo "wrote $out"
