#!/usr/bin/env bash
# The f32 forward's regression on the H200 (BENCHMARKS.md, "Owed"), bisected in one device
# call: the command-line tool built at several commits, each timed at the same shape, in turns,
# on one machine.
#
# Build on the development machine (older commits in git worktrees, built in a target folder
# of their own inside CARGO_TARGET_DIR's: sharing the tree's, they overwrite its crate's
# artifacts under the same names and cargo then takes them as fresh, 2026-11-28; each binary
# stripped and gzipped, about 3 MB):
#     examples/gpu_bisect.sh --build [COMMIT ...]     # into .gpu/bisect/
# Then on the GPU machine, from the project root (the device tool's `run`, carry [".gpu"]):
#     examples/gpu_bisect.sh "$OUT"                   # bisect.txt and bisect.tgz
# Rehearse it here on lavapipe:  BISECT_ARGS="--dims 4096 --mib 8" examples/gpu_bisect.sh /tmp/b
#
# Each binary runs `bench --dims 4096 --mib 256` (BISECT_ARGS replaces that; the commits'
# tools all take it; about 10 s a run on an H200, 18 runs), which checks both norms against the f64 reference before it
# times them against a copy in the same run. The order is forward, then reversed, so a clock
# that drifts over the call shows as a difference between the two rounds. The working tree's
# own build (the grid's .gpu/bin/wgpu-norm, if there) runs as "tree", and again with
# --v-per-invocation 16 (if the plain LayerNorm rises with more bytes in flight per invocation,
# the loss is in registers).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# 4b24641: 95–99 % of the copy on the H200 (2026-11-26); 9c3975b: the run-time flags and
# generated accessors; 34baee5: the next that builds a tool; 362eecf: the range retry;
# 2449d3a: the split rows; 47e7be5: the 2026-11-27 grid's kernels' neighbour; a14baab: before
# the flags were compiled in.
default_commits=(4b24641 9c3975b 34baee5 362eecf 2449d3a 47e7be5 a14baab)

if [[ "${1:-}" == "--build" ]]; then
    set -e
    shift
    commits=("$@")
    [[ ${#commits[@]} -gt 0 ]] || commits=("${default_commits[@]}")
    target=$(realpath -m "${CARGO_TARGET_DIR:-target}")/bisect
    trees=$(mktemp -d)
    mkdir -p .gpu/bisect
    for c in "${commits[@]}"; do
        sha=$(git rev-parse --short=7 "$c^{commit}")
        git worktree add --detach -q "$trees/$sha" "$sha"
        # Before examples/wgpu-norm/ the tool was the one file examples/wgpu-norm.rs: the same
        # example name either way.
        (cd "$trees/$sha" && CARGO_TARGET_DIR="$target" cargo build --release --locked \
            --example wgpu-norm)
        cp "$target/release/examples/wgpu-norm" ".gpu/bisect/wgpu-norm-$sha"
        strip ".gpu/bisect/wgpu-norm-$sha"
        gzip -9f ".gpu/bisect/wgpu-norm-$sha"
        git worktree remove --force "$trees/$sha"
    done
    rmdir "$trees"
    ls -l .gpu/bisect
    exit 0
fi

dest=${1:?usage: examples/gpu_bisect.sh OUTDIR | --build [COMMIT ...]}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
out=$(mktemp -d)
if [[ -f .gpu/gpu-env.sh ]] && command -v nvidia-smi >/dev/null; then
    source .gpu/gpu-env.sh >"$out/gpu-env.txt" 2>&1
fi
read -r -a args <<<"${BISECT_ARGS:---dims 4096 --mib 256}"

# name -> command, in build order, the working tree's last.
names=()
declare -A cmd
for z in .gpu/bisect/wgpu-norm-*.gz; do
    [[ -e $z ]] || continue
    sha=${z##*/wgpu-norm-}
    sha=${sha%.gz}
    gunzip -c "$z" >"$out/wgpu-norm-$sha" && chmod +x "$out/wgpu-norm-$sha"
    names+=("$sha")
    cmd[$sha]="$out/wgpu-norm-$sha bench ${args[*]}"
done
tree=.gpu/bin/wgpu-norm
[[ -x $tree ]] || tree=${CARGO_TARGET_DIR:-target}/release/examples/wgpu-norm
if [[ -x $tree ]]; then
    names+=(tree tree-v16)
    cmd[tree]="$tree bench ${args[*]}"
    cmd[tree-v16]="$tree bench ${args[*]} --v-per-invocation 16"
fi
[[ ${#names[@]} -gt 0 ]] || { echo "gpu_bisect: nothing built; run --build first" >&2; exit 2; }
# Built in order of their ls (by name), not of history: put history back.
order=()
for c in "${default_commits[@]}"; do
    for n in "${names[@]}"; do [[ $n == "$c"* ]] && order+=("$n"); done
done
for n in "${names[@]}"; do [[ " ${order[*]} " == *" $n "* ]] || order+=("$n"); done

status=0
summary="$dest/bisect.txt"
{
    echo "# gpu_bisect $(date -u +%FT%TZ), tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "# bench ${args[*]}; GB/s of the copy, LayerNorm and RMSNorm forward, each tool's own run"
} >"$summary"
reversed=()
for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
for round in 1 2; do
    if [[ $round == 1 ]]; then list=("${order[@]}"); else list=("${reversed[@]}"); fi
    for n in "${list[@]}"; do
        log="$out/round$round-$n.txt"
        echo "[round $round] $n: ${cmd[$n]}" >&2
        if ! ${cmd[$n]} >"$log" 2>&1; then
            status=1
            echo "round $round $n FAILED (see bisect.tgz)" >>"$summary"
        fi
        # The table rows, as "D copy LayerNorm RMSNorm" (GB/s): dtype, D, rows, copy, LN (%),
        # RMS (%), ...; before 9c3975b without the dtype.
        grep -E '^ +((f32|f16|bf16) +)?[0-9]+ +[0-9]+ +[0-9.]+ ' "$log" |
            awk -v r="$round" -v n="$n" '{ if ($1 !~ /^[0-9]/) $1 = ""; $0 = $0;
                printf "round %s %-9s D=%-6s copy %8s  LN %8s  RMS %8s\n", r, n, $1, $3, $4, $6 }' \
            >>"$summary"
        tar -C "$out" -czf "$dest/bisect.tgz" --exclude='wgpu-norm-*' .
    done
done
cat "$summary"
exit $status
