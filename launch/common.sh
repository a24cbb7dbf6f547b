# Shell helpers shared by the launch scripts (sourced, not run). The sourcing script sets
# `dry_run` (0 or 1) before calling `run`.

# One argument as a shell word: bare if safe, '--flag=value' quoted after the '='.
quote() {
  local arg="$1" flag=""
  if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]*$ ]]; then printf '%s' "$arg"; return; fi
  if [[ "$arg" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    flag="${BASH_REMATCH[1]}"
    arg="${BASH_REMATCH[2]}"
  fi
  if [[ "$arg" != *"'"* ]]; then printf "%s'%s'" "$flag" "$arg"; else printf '%s%s' "$flag" "${arg@Q}"; fi
}

# Prints a command under --dry-run, runs it otherwise.
run() {
  # shellcheck disable=SC2154  # dry_run: set by the sourcing script
  if ((dry_run)); then
    local arg words=()
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}
