# Shell helpers shared by the launch scripts (sourced, not run). The sourcing script sets
# `dry_run` (0 or 1) before calling `run`.

# Prints the calling script's header comment (lines 2 to usage_end) and exits with $1.
usage() {
  # shellcheck disable=SC2154  # usage_end: set by the sourcing script
  sed -n "2,${usage_end}p" "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# Parses the arguments every launch script takes (--config=, --workdir=, --dry-run, --help,
# and `-- OVERRIDES...`) into config, workdir, dry_run and overrides; any other argument
# goes to the script's own `script_arg` function, which returns non-zero for an unknown one.
# shellcheck disable=SC2034  # config, workdir, dry_run, overrides: read by the sourcing script
parse_args() {
  local script
  script="$(basename "$0")"
  while (($#)); do
    case "$1" in
      --config=*) config="${1#*=}" ;;
      --workdir=*) workdir="${1#*=}" ;;
      --dry-run) dry_run=1 ;;
      -h | --help) usage 0 ;;
      --) shift; overrides=("$@"); break ;;
      *) script_arg "$1" || { echo "$script: unknown argument $1" >&2; usage 2; } ;;
    esac
    shift
  done
}

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
