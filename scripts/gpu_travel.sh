#!/usr/bin/env bash
# A lent GPU machine's call sends the working tree (tracked files and untracked ones git does not ignore) with
# what it carries, 64 MiB in all, and refuses more. The tracked tree alone is about 88 MB, 81 of them the shipped
# bundle's four graphs and the two stage-1 checkpoints, which a training call does not need; so, in the repository:
#   scripts/gpu_travel.sh hold             before the call: those files leave the index (they stay on disk; nothing
#                                          is committed) and .git/info/exclude ignores them. A commit now would
#                                          delete them from the branch, so a pre-commit hook refuses commits
#                                          until restore.
#   scripts/gpu_travel.sh restore          after it: the index entries, .git/info/exclude and the hooks as they were.
#   scripts/gpu_travel.sh size [PATH...]   the MiB that would travel, with PATH... carried.
set -euo pipefail
HELD=('exports/default/*.onnx' 'checkpoints/*.pt')
exclude=$(git rev-parse --git-path info/exclude)
saved=$(git rev-parse --git-path gpu-travel-exclude)
hook=$(git rev-parse --git-path hooks/pre-commit)
case ${1:-} in
  hold)
    [ ! -e "$saved" ] || { echo "already held: run '$0 restore' first" >&2; exit 1; }
    git diff --cached --quiet || { echo "the index holds staged changes: commit or unstage them first" >&2; exit 1; }
    git rm -q --cached -- "${HELD[@]}"  # first: where it fails, nothing has changed
    mkdir -p "$(dirname "$exclude")"
    if [ -e "$exclude" ]; then cp "$exclude" "$saved"; else echo none > "$saved.absent"; : > "$saved"; fi
    printf '/%s\n' "${HELD[@]}" >> "$exclude"
    mkdir -p "$(dirname "$hook")"
    [ ! -e "$hook" ] || mv "$hook" "$saved.pre-commit"
    printf '#!/bin/sh\necho "scripts/gpu_travel.sh holds files out of the index: run it with restore before committing" >&2\nexit 1\n' > "$hook"
    chmod +x "$hook"
    echo "held back until '$0 restore':"
    git diff --cached --name-only | sed 's/^/  /'
    ;;
  restore)
    [ -e "$saved" ] || { echo "nothing is held" >&2; exit 1; }
    git reset -q -- "${HELD[@]}"
    rm -f "$hook"
    [ ! -e "$saved.pre-commit" ] || mv "$saved.pre-commit" "$hook"
    if [ -e "$saved.absent" ]; then rm "$exclude" "$saved" "$saved.absent"; else mv "$saved" "$exclude"; fi
    ;;
  size)
    shift
    bytes=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null \
            | awk '{ s += $1 } END { print s + 0 }')
    for path in "$@"; do bytes=$((bytes + $(du -sb -- "$path" | cut -f1))); done
    awk -v b="$bytes" 'BEGIN { printf "%.1f MiB would travel (the limit is 64 MiB)\n", b / 1048576; exit !(b <= 64 * 1048576) }'
    ;;
  *) echo "usage: $0 hold | restore | size [CARRIED_PATH...]" >&2; exit 2 ;;
esac
