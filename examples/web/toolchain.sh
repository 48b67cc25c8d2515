# Sourced by examples/web/serve.sh and .ci/web: what building for the browser and testing in it
# needs on Debian 12 without a wasm32 standard library (../shared/wasm/README.md is the
# tested recipe this follows). Installs what is missing, once, into .wasm-work/ (git-ignored):
# Debian's chromium and chromium-driver (system packages), Debian's rustc-web with its std
# source (unpacked there, not installed: std for wasm32 is built from source with
# -Zbuild-std), and the wasm-bindgen-cli of exactly the wasm-bindgen in Cargo.lock. Then
# exports WASM_CARGO (that cargo, with the variables it needs) and WASM_BINDGEN.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W="$_root/.wasm-work"
mkdir -p "$W/debs" "$W/root"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    _sudo=""
    [ "$(id -u)" -ne 0 ] && _sudo=sudo
    $_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $_sudo apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
fi
if [ ! -x "$W/root/usr/bin/rustc" ]; then
    # A failed download fails here (the callers run with pipefail), not as a half-unpacked
    # toolchain later.
    (cd "$W/debs" && apt-get download rustc-web cargo-web libstd-rust-web-1.96 \
        libstd-rust-web-dev rust-web-src libllvm22 libgit2-1.5 libhttp-parser2.9 \
        libmbedcrypto7 libmbedtls14 libmbedx509-1 2>&1 | { grep -v unsandboxed || true; })
    for f in "$W"/debs/*.deb; do dpkg-deb -x "$f" "$W/root"; done
    if [ ! -x "$W/root/usr/bin/rustc" ] || [ ! -x "$W/root/usr/bin/cargo" ]; then
        echo "toolchain.sh: rustc-web did not unpack into $W/root" >&2
        rm -rf "$W/root"
        return 1
    fi
fi
export LD_LIBRARY_PATH="$W/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUSTC="$W/root/usr/bin/rustc" RUSTDOC="$W/root/usr/bin/rustdoc" RUSTC_BOOTSTRAP=1
# rust-lld comes with every rustup toolchain.
_sysroot=$(rustc +stable --print sysroot)
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$_sysroot/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
_wbv=$(grep -A1 '^name = "wasm-bindgen"$' "$_root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
if [ "$("$W/tools/bin/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $_wbv" ]; then
    # Not --locked: its lock file asks for a webpki-roots release the registry lacks.
    cargo +stable install -q wasm-bindgen-cli --version "$_wbv" --root "$W/tools"
fi
export WASM_BINDGEN="$W/tools/bin/wasm-bindgen"
export CHROMEDRIVER=/usr/bin/chromedriver
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$W/tools/bin/wasm-bindgen-test-runner"
# A target folder of its own: these flags rebuild everything, and must not evict native builds.
WASM_CARGO=("$W/root/usr/bin/cargo")
WASM_FLAGS=(--release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort
    --target-dir "$W/target")
