#!/usr/bin/env bash
# The f32 forward's regression on the H200 (BENCHMARKS.md, "Owed"), bisected in one device
# call: the command-line tool built at several commits, each timed at the same shape, in turns,
# on one machine.
#
# Build on the development machine (older commits in git worktrees, built in a target folder
# of their own inside CARGO_TARGET_DIR's: sharing the tree's, they overwrite its crate's
# artifacts under the same names and cargo then takes them as fresh, 2026-11-28; then the
# working tree's own tool as "tree"; each binary stripped and gzipped, about 3 MB):
#     examples/gpu_bisect.sh --build [COMMIT ...]     # into .gpu/bisect/
#     examples/gpu_bisect.sh --build tree             # the experiments and the tree only
# Then on the GPU machine, from the project root (the device tool's `run`, with carry
# [".gpu/bisect", ".gpu/gl", ".gpu/gpu-env.sh"], about 30 MB with the experiments: all of
# .gpu, the grid's binaries included, is over the tool's 64 MiB):
#     examples/gpu_bisect.sh "$OUT"                   # bisect.txt and bisect.tgz
# Rehearse it here on lavapipe:
#     BISECT_ARGS="--dims 4096 --mib 8" BISECT_EXP_MIB=8 examples/gpu_bisect.sh /tmp/b
#
# Each binary runs `bench --dims 4096 --mib 256` (BISECT_ARGS replaces that; the commits'
# tools all take it; about 10 s a run on an H200, 18 runs), which checks both norms against
# the f64 reference before it times them against a copy in the same run. The order is
# history's, then reversed, so a clock that drifts over the call shows as a difference between
# the two rounds. The tree's tool runs last (first in the second round), and again with
# --v-per-invocation 16 (if the plain LayerNorm rises with more bytes in flight per
# invocation, the loss is in registers).
#
# Then the experiments: each examples/experiments/NAME.patch (a kernel change not on main, for
# want of a GPU to measure it) is applied to HEAD in a worktree by --build and packed as
# "exp-NAME"; each NAME.args is a setting of the tree's own tool instead (its "# tool: ARGS"
# line, a tuning knob: nothing to build). The run times each against the tree at the shape
# its "# bench: ARGS" line names, in turns (tree, exp, exp, tree), after the bisect's rounds.
# BISECT_EXPERIMENTS=0 skips them; BISECT_EXPERIMENTS="NAME ..." runs those, in that order
# (BISECT_ROUNDS=0 skips the bisect's rounds before them). By default the patches run in
# name order, then the settings:
# - backward-unpaired: the reverse of main's paired 16-bit backward at odd D, one D in two
#   16-bit types at 64 MiB: about a minute.
# - cache-in-place: the reverse of main's register diet, two D in f32 and bf16, forward and
#   backward at 64 MiB: about a minute, estimated.
# - first-element-pivot: the reverse of main's per-invocation pivots, three D in f32 and bf16
#   at 64 MiB, forward only: about a minute, estimated.
# - paired-param-words and partial-batch: about 4 minutes together.
# - pow2-shapes: the reverse of main's workgroup shape, three D in f32 and bf16 at 64 MiB:
#   about 2 minutes, estimated.
# - two-reductions: the reverse of main's one-reduction LayerNorm forward, three D in f32 and
#   bf16 at 64 MiB, forward only: about a minute, estimated; since the per-invocation pivots
#   it goes back past them too.
# - short-rows-alone (a setting): `--side-by-side-below 1`, main's forward rows of fewer than
#   two V's an invocation alone again, as until 2026-11-29; four D in f32 and bf16 at 64 MiB,
#   forward only: about a minute, estimated.
# - backward-side-by-side (a setting): `--side-by-side-below-backward 4`, the backward's rows
#   of one and two V's an invocation side by side too (D = 256-512); four D, f32 and bf16,
#   forward and backward at 64 MiB: about a minute and a half, estimated.
# - forward-side-by-side (a setting): `--side-by-side-below 8`, the forward's rows of two to
#   four V's an invocation side by side too (D = 512-1024); three D, forward only: about a
#   minute, estimated.
# With all of them the call would pass 10 minutes: BISECT_EXPERIMENTS="short-rows-alone
# backward-side-by-side first-element-pivot two-reductions forward-side-by-side pow2-shapes
# backward-unpaired cache-in-place" takes the newest and likeliest first. The whole call
# should stay under the device tool's 10 minutes; each run's figures are packed as it ends,
# so a call cut short still returns what it measured.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# In history's order. 4b24641: 95–99 % of the copy on the H200 (2026-11-26); 9c3975b: the
# run-time flags and generated accessors; 34baee5: the next that builds a tool; 362eecf: the
# range retry; 47e7be5: the 2026-11-26 grid's kernels; 2449d3a: the split rows; a14baab:
# before the flags were compiled in.
default_commits=(4b24641 9c3975b 34baee5 362eecf 47e7be5 2449d3a a14baab)

if [[ "${1:-}" == "--build" ]]; then
    set -e
    shift
    commits=("$@")
    [[ ${#commits[@]} -gt 0 ]] || commits=("${default_commits[@]}")
    # `--build tree`: the commits' tools as they are, only the experiments and the tree again.
    [[ "${commits[*]}" == tree ]] && commits=()
    target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
    trees=$(mktemp -d)
    # A failed build leaves no worktree behind.
    trap 'for t in "$trees"/*; do [[ -d $t ]] && git worktree remove --force "$t"; done;
          rm -rf "$trees"; git worktree prune' EXIT
    mkdir -p .gpu/bisect
    pack() { # name, built binary
        cp "$2" ".gpu/bisect/wgpu-norm-$1"
        strip ".gpu/bisect/wgpu-norm-$1"
        gzip -9f ".gpu/bisect/wgpu-norm-$1"
    }
    for c in ${commits[@]+"${commits[@]}"}; do
        sha=$(git rev-parse --short=7 "$c^{commit}")
        git worktree add --detach -q "$trees/$sha" "$sha"
        # Before examples/wgpu-norm/ the tool was the one file examples/wgpu-norm.rs: the same
        # example name either way.
        (cd "$trees/$sha" && CARGO_TARGET_DIR="$target/bisect" cargo build --release --locked \
            --example wgpu-norm)
        pack "$sha" "$target/bisect/release/examples/wgpu-norm"
        git worktree remove --force "$trees/$sha"
    done
    # The experiments, each on HEAD (a patch that no longer applies is skipped, said so).
    rm -f .gpu/bisect/wgpu-norm-exp-*.gz
    for patch in examples/experiments/*.patch; do
        [[ -e $patch ]] || continue
        name=$(basename "$patch" .patch)
        git worktree add --detach -q "$trees/exp-$name" HEAD
        if (cd "$trees/exp-$name" && git apply "$here/$patch"); then
            (cd "$trees/exp-$name" && CARGO_TARGET_DIR="$target/bisect" cargo build --release \
                --locked --example wgpu-norm)
            pack "exp-$name" "$target/bisect/release/examples/wgpu-norm"
        else
            echo "gpu_bisect: $patch does not apply to HEAD: skipped" >&2
        fi
        git worktree remove --force "$trees/exp-$name"
    done
    # The tree itself, as it is (uncommitted changes included), in its own target folder.
    CARGO_TARGET_DIR="$target" cargo build --release --example wgpu-norm
    pack tree "$target/release/examples/wgpu-norm"
    git rev-parse --short HEAD >.gpu/bisect/tree-commit.txt
    git status --porcelain --untracked-files=no | grep -q . && echo "+ changes" >>.gpu/bisect/tree-commit.txt
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

# Each name's tool and its extra arguments.
names=()
declare -A exe extra
for z in .gpu/bisect/wgpu-norm-*.gz; do
    [[ -e $z ]] || continue
    n=${z##*/wgpu-norm-}
    n=${n%.gz}
    gunzip -c "$z" >"$out/wgpu-norm-$n" && chmod +x "$out/wgpu-norm-$n"
    names+=("$n")
    exe[$n]=$out/wgpu-norm-$n
    extra[$n]=""
done
[[ ${#names[@]} -gt 0 ]] || { echo "gpu_bisect: nothing built; run --build first" >&2; exit 2; }
# ls gives them by name: put history back, the tree last.
order=()
for c in "${default_commits[@]}"; do
    for n in "${names[@]}"; do [[ $n == "$c"* ]] && order+=("$n"); done
done
for n in "${names[@]}"; do
    [[ $n == tree || $n == exp-* || " ${order[*]} " == *" $n "* ]] || order+=("$n")
done
if [[ -n ${exe[tree]:-} ]]; then
    order+=(tree tree-v16)
    exe[tree-v16]=${exe[tree]}
    extra[tree-v16]="--v-per-invocation 16"
    # Experiments that are a setting of the tree's own tool (NAME.args: its "# tool: ARGS"
    # line) rather than a patch: nothing to build.
    for a in examples/experiments/*.args; do
        [[ -e $a ]] || continue
        n=exp-$(basename "$a" .args)
        # A patch of the same name (or a leftover build of one) keeps its own binary.
        [[ -n ${exe[$n]:-} ]] && continue
        names+=("$n")
        exe[$n]=${exe[tree]}
        extra[$n]=$(sed -n 's/^# tool: //p' "$a" | head -1)
    done
fi

status=0
summary="$dest/bisect.txt"
{
    echo "# gpu_bisect $(date -u +%FT%TZ), tree built at $(tr '\n' ' ' <.gpu/bisect/tree-commit.txt 2>/dev/null || echo '?')"
    echo "# bench ${args[*]}; GB/s of the copy, LayerNorm and RMSNorm forward, each tool's own run"
} >"$summary"
reversed=()
for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
rounds=(1 2)
[[ ${BISECT_ROUNDS:-2} == 0 ]] && rounds=()
for round in ${rounds[@]+"${rounds[@]}"}; do
    if [[ $round == 1 ]]; then list=("${order[@]}"); else list=("${reversed[@]}"); fi
    for n in "${list[@]}"; do
        log="$out/round$round-$n.txt"
        read -r -a more <<<"${extra[$n]}"
        echo "[round $round] $n: ${exe[$n]} bench ${args[*]} ${more[*]}" >&2
        if ! "${exe[$n]}" bench "${args[@]}" "${more[@]}" >"$log" 2>&1; then
            status=1
            echo "round $round $n FAILED (see bisect.tgz)" >>"$summary"
        fi
        # The table rows, as "D copy LayerNorm RMSNorm" (GB/s): dtype, D, rows, copy, LN (%),
        # RMS (%), ...; before 47e7be5 without the dtype.
        grep -E '^ +((f32|f16|bf16) +)?[0-9]+ +[0-9]+ +[0-9.]+ ' "$log" |
            awk -v r="$round" -v n="$n" '{ if ($1 !~ /^[0-9]/) $1 = ""; $0 = $0;
                printf "round %s %-9s D=%-6s copy %8s  LN %8s  RMS %8s\n", r, n, $1, $3, $4, $6 }' \
            >>"$summary"
        tar -C "$out" -czf "$dest/bisect.tgz" --exclude='wgpu-norm-*' .
    done
done

# The experiments against the tree, each at its own shape.
if [[ ${BISECT_EXPERIMENTS:-1} != 0 && -n ${exe[tree]:-} ]]; then
    echo "# experiments: tree against exp-NAME at the patch's shape, in turns; the table rows" >>"$summary"
    experiments=("${names[@]}")
    if [[ ${BISECT_EXPERIMENTS:-1} != 1 ]]; then
        read -r -a experiments <<<"$BISECT_EXPERIMENTS"
        experiments=("${experiments[@]/#/exp-}")
    fi
    for n in "${experiments[@]}"; do
        [[ $n == exp-* ]] || continue
        [[ -n ${exe[$n]:-} ]] || { echo "gpu_bisect: no $n built" >&2; continue; }
        patch=examples/experiments/${n#exp-}.patch
        [[ -e $patch ]] || patch=examples/experiments/${n#exp-}.args
        read -r -a eargs <<<"$(sed -n 's/^# bench: //p' "$patch" | head -1 |
            sed -E "${BISECT_EXP_MIB:+s/--mib [0-9]+/--mib $BISECT_EXP_MIB/}")"
        [[ ${#eargs[@]} -gt 0 ]] || eargs=("${args[@]}")
        echo "## $n: bench ${eargs[*]}" >>"$summary"
        i=0
        for m in tree "$n" "$n" tree; do
            i=$((i + 1))
            log="$out/exp-$n-$i-$m.txt"
            read -r -a more <<<"${extra[$m]}"
            echo "[experiment $n] $m: bench ${eargs[*]} ${more[*]}" >&2
            if ! "${exe[$m]}" bench "${eargs[@]}" "${more[@]}" >"$log" 2>&1; then
                status=1
                echo "$m FAILED (see bisect.tgz)" >>"$summary"
            fi
            grep -E '^ +(f32|f16|bf16) +[0-9]+ ' "$log" | sed "s/^/$(printf '%-26s' "$m")/" >>"$summary"
            tar -C "$out" -czf "$dest/bisect.tgz" --exclude='wgpu-norm-*' .
        done
    done
fi
cat "$summary"
exit $status
