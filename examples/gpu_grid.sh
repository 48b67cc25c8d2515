#!/usr/bin/env bash
# The whole performance grid on a GPU machine in one call: both norms forward and backward in
# f32/f16/bf16 over every D, few rows (a decode step), the tuning knobs, the forward option
# variants, burn's own norms, and PyTorch's fused CUDA kernels at the same shapes, same
# machine, same call. Every kernel is checked against the f64 reference before it is timed.
#
# Build on the development machine (the GPU machine has no Rust), following
# ../shared/gpu/README.md:
#     examples/gpu_grid.sh --build        # binaries into .gpu/bin/
# Then on the GPU machine, from the project root (the device tool's `run`, with carry
# [".gpu/bin", ".gpu/gl", ".gpu/gpu-env.sh"], about 58 MB: with gpu_bisect.sh's binaries all
# of .gpu is over the tool's 64 MiB):
#     examples/gpu_grid.sh "$OUT"         # [--quick] for a small rehearsal
# GRID_SECONDS=N skips the steps that would start after N seconds, so that a call with a time
# limit still ends with the merged files of what it measured (the steps it skipped are listed).
# GRID_STEPS=a,b,... runs only the steps named (torch grid few few-whole vstrided32 autotune
# v16bit-16 sbs-bwd4 sbs-fwd8 sbs-fwd1 variants burn v4 v16 b4k b64k wg256; an unknown name is an
# error): on an H200 the grid alone took 383 s of a 458 s call (2026-11-27), so a 10-minute
# call holds the grid or the rest, not both (few-whole then runs without PyTorch beside it,
# which `torch` times):
#     GRID_SECONDS=430 examples/gpu_grid.sh "$OUT"                  # first call
#     GRID_STEPS=few-whole,vstrided32,autotune,v16bit-16,sbs-bwd4,sbs-fwd8,sbs-fwd1,variants,burn,v4,v16,b4k,b64k,wg256 \
#         examples/gpu_grid.sh "$OUT"                                 # second call
# examples/gpu_bisect.sh (the f32 forward's regression, about 3 minutes) goes first, in a
# call of its own, while the f32 forward's loss since 4b24641 is unexplained.
# The exit status is 1 when a step failed, 3 when none failed but some were skipped for time.
# Rehearse it here on lavapipe without PyTorch:  examples/gpu_grid.sh /tmp/grid --quick
#
# Writes four files into the folder: grid.json (everything, one document), grid.txt (the
# tables), grid.svg, and raw.tgz (each step's own output and log). Few files, because the
# device tool brings back only a handful (2026-11-26: 8 of 35 came back, the rest lost). Steps
# run in order of importance and are packed as they finish, so a run cut short still returns
# what it measured.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

if [[ "${1:-}" == "--build" ]]; then
    set -e
    mkdir -p .gpu/bin
    cargo build --release --example wgpu-norm
    cp "${CARGO_TARGET_DIR:-target}/release/examples/wgpu-norm" .gpu/bin/
    for b in forward; do
        exe=$(cargo bench --no-run --bench "$b" --message-format=json 2>/dev/null |
            jq -r 'select(.executable != null and .target.kind == ["bench"]) | .executable')
        cp "$exe" ".gpu/bin/bench-$b"
    done
    # burn's bench needs the burn feature (a long first build; CARGO_TARGET_DIR is honoured).
    exe=$(cargo bench --no-run --all-features --bench burn --message-format=json 2>/dev/null |
        jq -r 'select(.executable != null and .target.kind == ["bench"]) | .executable')
    cp "$exe" .gpu/bin/bench-burn
    # Stripped: the device tool carries at most 64 MiB (bench-burn alone is 58 MB unstripped).
    strip .gpu/bin/*
    ls -l .gpu/bin
    exit 0
fi

dest=${1:?usage: examples/gpu_grid.sh OUTDIR [--quick] | --build}
quick=${2:-}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
out=$(mktemp -d)
# What is there so far, into the destination (after every step).
pack() { tar -C "$out" -czf "$dest/raw.tgz" .; }
bin=.gpu/bin
[[ -x $bin/wgpu-norm ]] || bin=${CARGO_TARGET_DIR:-target}/release/examples
# Only on the GPU machine: it points the Vulkan loader at the NVIDIA driver.
if [[ -f .gpu/gpu-env.sh ]] && command -v nvidia-smi >/dev/null; then
    source .gpu/gpu-env.sh >"$out/gpu-env.txt" 2>&1
fi
torch_py=examples/torch_norms.py
have_torch=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

if [[ $quick == --quick ]]; then
    dims=128,1024,4097
    few_dims=4096
    mib=(--mib 2)
    iters=(--iters 3 --warm-up-ms 50)
    sweep_dims=128,4096
    short_dims=256
else
    dims=128,256,512,1024,2048,4096,4097,5120,6912,8192,16384,32768
    few_dims=4096,8192
    mib=(--mib 256)
    iters=(--iters 50 --warm-up-ms 500)
    sweep_dims=128,512,4096,4097
    short_dims=256,300,512,1024
fi
mib_n=${mib[1]}
# Every step runs even when one before it failed; the script's exit status says whether all
# passed (a failed check, a missing binary, a crashed PyTorch run), and steps.txt which.
failed=()
skipped=()
started=$SECONDS
steps=" torch grid few few-whole vstrided32 autotune v16bit-16 sbs-bwd4 sbs-fwd8 sbs-fwd1 variants burn v4 v16 b4k b64k wg256 "
wanted=${GRID_STEPS:-}
for s in ${wanted//,/ }; do
    [[ $steps == *" $s "* ]] || { echo "GRID_STEPS: no step named $s (steps:$steps)" >&2; exit 2; }
done
# True for a step GRID_STEPS leaves out, or (and the step listed as skipped) once GRID_SECONDS
# have passed.
late() {
    if [[ -n ${GRID_STEPS:-} && ",$GRID_STEPS," != *",$1,"* ]]; then
        return 0
    fi
    if [[ ${GRID_SECONDS:-0} -gt 0 && $((SECONDS - started)) -ge $GRID_SECONDS ]]; then
        skipped+=("$1")
        echo "== $(date -u +%T) skipped (GRID_SECONDS=$GRID_SECONDS): $1" | tee -a "$out/steps.txt" >&2
        return 0
    fi
    return 1
}
ours() { "$bin/wgpu-norm" bench "$@"; }
log() {
    [[ -f $out/steps.txt ]] && pack
    echo "== $(date -u +%T) $*" | tee -a "$out/steps.txt" >&2
}

log "adapter"
"$bin/wgpu-norm" info >"$out/info.txt" 2>&1

# 1. PyTorch at the grid's shapes, then ours with PyTorch beside it.
if [[ $have_torch == 1 ]] && ! late torch; then
    log "PyTorch grid"
    python3 "$torch_py" --mib "$mib_n" --dims "$dims" >"$out/torch_grid.csv" \
        2>"$out/torch_grid.err" || failed+=("PyTorch grid")
    log "PyTorch few rows"
    for r in 1 8 64; do
        python3 "$torch_py" --rows-fixed "$r" --dims "$few_dims" >"$out/torch_few_$r.csv" \
            2>>"$out/torch_few.err" || failed+=("PyTorch $r rows")
    done
    # One header (from whichever run printed one), then every run's rows.
    { grep -h '^dtype' "$out"/torch_few_*.csv | head -1
      grep -hv '^#\|^dtype' "$out"/torch_few_*.csv; } >"$out/torch_few.csv" || true
    torch_grid=(--torch "$out/torch_grid.csv")
    torch_few=(--torch "$out/torch_few.csv")
else
    [[ $have_torch == 1 ]] || log "no PyTorch with CUDA here: our figures only"
    torch_grid=()
    torch_few=()
fi
late grid || { log "ours: grid"
ours --dims "$dims" "${mib[@]}" --dtypes f32,f16,bf16 --backward "${iters[@]}" \
    "${torch_grid[@]}" --json "$out/grid-main.json" --svg "$out/grid.svg" \
    >"$out/grid-main.txt" 2>"$out/grid-main.err" || failed+=("grid"); }
late few || { log "ours: few rows"
ours --dims "$few_dims" --rows 1,8,64 --dtypes f32,f16,bf16 --backward "${iters[@]}" \
    "${torch_few[@]}" --json "$out/grid-few.json" >"$out/grid-few.txt" 2>"$out/grid-few.err" || failed+=("few rows"); }
late few-whole || { log "ours: few rows, whole (rows not split over workgroups)"
ours --dims "$few_dims" --rows 1,8,64 --dtypes f32,bf16 --split-groups 0 "${iters[@]}" \
    "${torch_few[@]}" --json "$out/grid-few-whole.json" >"$out/grid-few-whole.txt" \
    2>"$out/grid-few-whole.err" || failed+=("few rows, whole"); }

# 2. The tuning knobs (f32 unless a sweep says otherwise) and the autotune's choice, against
# the defaults of the grid above (same call).
sweep() { # name [--at DIMS] tool-args...
    local name=$1 at=$sweep_dims
    shift
    if [[ ${1:-} == --at ]]; then
        at=$2
        shift 2
    fi
    late "$name" && return
    log "ours: tuning $name"
    ours --dims "$at" "${mib[@]}" --backward "${iters[@]}" "$@" \
        --json "$out/tune-$name.json" >"$out/tune-$name.txt" 2>"$out/tune-$name.err" ||
        failed+=("tuning $name")
}


# The sweeps that earlier predictions name first, then criterion and burn, then the rest.
# Strided rows (D % 4 != 0: D = 4097 in the full sweep) with lavapipe's choice, 32 V's.
sweep vstrided32 --v-per-invocation-strided 32
# What the autotune chooses here (its cache kept with the results), against the default above.
WGPU_NORM_CACHE_DIR="$out/tune-cache" sweep autotune --autotune
# 16-bit rows with twice as many V's as f32 rows (the bytes of f32 rows in flight, twice the
# cached registers) against the default of as many: the grid's bf16 columns above.
sweep v16bit-16 --dtypes bf16 --v-per-invocation-16bit 16
# Short rows side by side: the backward's of up to 4 V's an invocation (D = 256-512), the
# forward's of up to 8 (D = 512-1024), and the forward's alone from one (D = 256-508, as until
# 2026-11-29), against the defaults in the grid above (examples/experiments/*-side-by-side.args
# and short-rows-alone.args time them in turns with the default).
sweep sbs-bwd4 --at "$short_dims" --dtypes f32,bf16 --side-by-side-below-backward 4
sweep sbs-fwd8 --at "$short_dims" --dtypes f32,bf16 --side-by-side-below 8
sweep sbs-fwd1 --at "$short_dims" --dtypes f32,bf16 --side-by-side-below 1

# 3. The forward option variants (criterion, D = 4096), and burn's norms against ours.
crit=(--warm-up-time 0.3 --measurement-time 1 --noplot)
if ! late variants; then
    log "criterion: forward variants"
    WGPU_NORM_BENCH_MIB=$mib_n "$bin/bench-forward" --bench "forward variants" "${crit[@]}" \
        >"$out/variants.txt" 2>"$out/variants.err" || failed+=("variants")
fi
if ! late burn; then
    log "criterion: burn"
    WGPU_NORM_BENCH_MIB=$mib_n "$bin/bench-burn" --bench "${crit[@]}" \
        >"$out/burn.txt" 2>"$out/burn.err" || failed+=("burn")
fi

# 4. The other knobs, f32.
sweep v4 --v-per-invocation 4
sweep v16 --v-per-invocation 16
sweep b4k --bytes-per-group 4096
sweep b64k --bytes-per-group 65536
sweep wg256 --max-workgroup-size 256

# 5. One document and one text of everything.
log "merging"
python3 - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
doc = {"tool": "examples/gpu_grid.sh", "parts": {}}
for p in sorted(out.glob("*.json")):
    if p.name != "grid.json":
        doc["parts"][p.stem] = json.loads(p.read_text())
for name in ["info.txt", "torch_grid.csv", "torch_few.csv", "variants.txt", "burn.txt"]:
    p = out / name
    if p.exists():
        doc["parts"][name] = p.read_text()
(out / "grid.json").write_text(json.dumps(doc, indent=1) + "\n")
EOF
{
    # Every sweep's table, whatever sweeps there are.
    for f in info grid-main grid-few grid-few-whole $(cd "$out" && ls tune-*.txt 2>/dev/null); do
        f=${f%.txt}
        [[ -f $out/$f.txt ]] && { echo "### $f"; cat "$out/$f.txt"; echo; }
    done
    [[ -f $out/variants.txt ]] && { echo "### forward variants (criterion)"; grep -E 'time:|thrpt:|^[a-z]' "$out/variants.txt"; }
    [[ -f $out/burn.txt ]] && { echo "### burn (criterion)"; grep -E 'time:|thrpt:|^[a-z]' "$out/burn.txt"; }
} >"$out/grid.txt"
[[ ${#skipped[@]} -gt 0 ]] && echo "### skipped for time: ${skipped[*]}" >>"$out/grid.txt"
cp "$out/grid.json" "$out/grid.txt" "$dest/"
[[ -f $out/grid.svg ]] && cp "$out/grid.svg" "$dest/"
if [[ ${#failed[@]} -gt 0 ]]; then
    log "FAILED: ${failed[*]} (see raw.tgz)"
    pack
    exit 1
fi
pack
if [[ ${#skipped[@]} -gt 0 ]]; then
    log "done, but skipped for time: ${skipped[*]}"
    exit 3
fi
log "done"
