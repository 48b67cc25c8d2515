#!/usr/bin/env bash
# Builds the browser page and serves it on http://127.0.0.1:8000/ (one command; the first run
# installs the toolchain, see toolchain.sh, and takes minutes).
#     examples/web/serve.sh            # build and serve
#     examples/web/serve.sh --build    # build only (CI)
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/web/toolchain.sh
"${WASM_CARGO[@]}" build "${WASM_FLAGS[@]}" --example web
"$WASM_BINDGEN" --target web --no-typescript --out-dir examples/web/pkg \
    "$W/target/wasm32-unknown-unknown/release/examples/web.wasm"
[[ "${1:-}" == --build ]] && exit 0
echo "open http://127.0.0.1:8000/ in a browser with WebGPU (Ctrl-C stops the server)"
exec python3 -m http.server --bind 127.0.0.1 --directory examples/web 8000
