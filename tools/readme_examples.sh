#!/usr/bin/env bash
# Re-create the outputs that docs/experiments.md shows under "Sweeps" and "Comparing
# commits and experiments": a real run on synth, every command printed before its output.
#
#   . .venv/bin/activate && tools/readme_examples.sh > experiments_examples.txt
#
# KEEP=1 keeps the clone (its path goes to stderr) to look around in.
#
# It works in a throw-away clone of HEAD, so this checkout's workspace, branches and
# experiments are left alone. The clone shares this checkout's DVC cache: stages
# already run here (same code, data and parameters) are restored from DVC's run cache
# instead of recomputed. From nothing, about 10 minutes on 2 cores.
set -euo pipefail

repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
cleanup() {
    # The experiment queue's worker runs in the clone: stop it before removing the clone
    # (it may still write there for a moment, hence the retries).
    (cd "$work/rdfa" 2>/dev/null && dvc queue stop >/dev/null 2>&1) || true
    if [ -n "${KEEP:-}" ]; then echo "kept $work/rdfa" >&2; return; fi
    for _ in 1 2 3 4 5 6 7 8 9 10; do rm -rf "$work" 2>/dev/null && return; sleep 2; done
    echo "could not remove $work" >&2
}
trap cleanup EXIT
# Experiments and the example commit are git commits: give them an author if git has none.
export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-readme example}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-readme@example.invalid}"
export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}" GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"

show() {  # print a command line as docs/experiments.md shows it, then run it
    printf '\n$ %s\n' "$1"
    eval "$1"
}

git clone -q "$repo" "$work/rdfa"
cd "$work/rdfa"
git checkout -q -B main "$(git -C "$repo" rev-parse HEAD)"
dvc cache dir --local "$repo/.dvc/cache"

# The committed state (restored from the run cache when this checkout ran it).
dvc repro -q
if [ -n "$(git status --porcelain)" ]; then git add -A && git commit -q -m "dvc repro"; fi

echo "## Results, metrics and plots"
show "dvc metrics show metrics/synth.json"

echo
echo "## Sweeps"
show "dvc exp run --queue -n L2 -S regions.L=2"
show "dvc exp run --queue -n L4 -S regions.L=4"
show "dvc exp run --queue -n D128 -S whitening.D=128"
show "dvc exp run --queue -n D256 -S whitening.D=256"
printf '\n$ %s\n' "dvc exp run --run-all -j 1"
dvc exp run --run-all -j 1 > "$work/queue.log" 2>&1 || { cat "$work/queue.log"; exit 1; }
echo "(log not shown)"
show "dvc exp show --only-changed --md --drop 'methods|features/|results'"

echo
echo "## Two experiments"
show "dvc metrics diff L2 D128 --targets metrics/synth.json"
show "dvc metrics diff L2 D128 --targets metrics/synth_methods.json | grep -E 'Path|O2_R\.'"
show "dvc params diff L2 D128"
show "dvc plots diff L2 D128 -o compare_L2_D128"

echo
echo "## Two commits"
show "dvc exp apply D128"
show "git commit -q -am 'whitening.D=128'"
show "dvc metrics diff HEAD~1 HEAD --targets metrics/synth.json"
show "dvc params diff HEAD~1 HEAD"
show "dvc plots diff HEAD~1 HEAD -o compare_commits"
show "dvc plots diff HEAD~1 HEAD --json | python -c 'import json, sys; print(*json.load(sys.stdin)[\"data\"], sep=\"\\n\")'"
