#!/usr/bin/env bash
# The device tool sends the working tree (tracked files and untracked ones git does not ignore)
# plus the carried paths, at most 64 MiB in all; the tracked weights and checkpoints under
# book/results are far more. Take them out of the index for the call (they stay on disk) and
# put them back after it:
#   bash scripts/device_tree.sh hide       # says how much the call will send
#   ... the device call (carry ["data"]): scripts/gpu_queue.sh ...
#   bash scripts/device_tree.sh restore
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
backup=.git/gitignore.device
case "${1:-}" in
hide)
    if [[ -e $backup ]]; then echo "already hidden ($backup exists): run '$0 restore' first" >&2; exit 1; fi
    cp .gitignore "$backup"
    sed -i '/^!book\/results\//d' .gitignore  # the exceptions that keep weights and checkpoints tracked
    git rm -q --cached --ignore-unmatch -- 'book/results/*.pt' 'book/results/*.ckpt'
    tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
    data=$(du -sb data 2>/dev/null | cut -f1 || echo 0)
    echo "the call sends $(( tree / 1048576 )) MiB of tree + $(( data / 1048576 )) MiB of data/ (limit 64 MiB)"
    if (( tree + data > 64 * 1048576 )); then
        echo "too big for the device tool: look for large untracked files ('$0 restore' undoes the hide)" >&2; exit 1
    fi
    ;;
restore)
    if [[ ! -e $backup ]]; then echo "nothing to restore: $backup is missing (was 'hide' run?)" >&2; exit 1; fi
    cp "$backup" .gitignore && rm "$backup"
    git reset -q -- book/results
    ;;
*)
    echo "usage: $0 hide|restore" >&2; exit 2
    ;;
esac
