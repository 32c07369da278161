#!/usr/bin/env bash
# Commit the progress of long training runs (run directories under results/<preset>/runs/) so
# that a fresh clone on any machine resumes them: each run's small files and its latest
# checkpoint, and the checkpointed curves of the section 6.2 experiment (theory_combinations/).
# Commits only when every run's `checkpoints/checkpoint` names files that exist (a save in
# progress is skipped and picked up by the next snapshot).
#   benchmarks/snapshot_runs.sh results/paper_cpu/runs "paper_cpu: progress"
set -euo pipefail
root=${1:?usage: snapshot_runs.sh RUNS_DIR [MESSAGE]}
message=${2:-"$root: training progress"}
# The newest checkpoint the state file of RUN_DIR/checkpoints lists (reptile_tf.rundir reads the
# run-directory format; no TensorFlow); empty when none.
python=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
latest_checkpoint() { "$python" -m reptile_tf.rundir latest-checkpoint "$1" || true; }
for index in $(find "$root" -path '*/checkpoints/checkpoint'); do
    dir=$(dirname "$index")
    latest=$(latest_checkpoint "$(dirname "$dir")")
    if [ ! -f "$dir/$latest.index" ] || [ ! -f "$dir/$latest.data-00000-of-00001" ]; then
        echo "checkpoint $dir/$latest is being written; try again in a few seconds" >&2
        exit 1
    fi
    # Older checkpoints (a run trained with --keep-checkpoints > 1) stay out of git.
    for file in "$dir"/ckpt-*; do
        case "$(basename "$file")" in "$latest".*) ;; *) git rm -q --cached --ignore-unmatch "$file" ;; esac
    done
done
# hidden files: an atomic write's temporary file (reptile_tf.io.atomic_path), never committed
git add -- $(find "$root" -type f ! -name '.*' ! -path '*/checkpoints/ckpt-*') $(find "$root" -type f -path '*/checkpoints/ckpt-*' | while read -r f; do
    dir=$(dirname "$f"); latest=$(latest_checkpoint "$(dirname "$dir")")
    case "$(basename "$f")" in "$latest".*) echo "$f" ;; esac; done)
git commit -q -m "$message" -- "$root" && git log --oneline -1
