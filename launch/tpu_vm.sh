#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, copy this checkout to every worker and install
# it, start the run on all workers, follow worker 0's log until the run ends, delete it.
#
#   launch/tpu_vm.sh --name=flip-l16 --zone=us-central2-b --accelerator-type=v4-32 \
#       --config=configs/flip_l16.py --workdir=gs://BUCKET/runs/l16 [--spot] \
#       [--project=P] [--version=RUNTIME] [--steps=create,install,train,logs,delete] \
#       [--dry-run] [-- --config.KEY=VALUE ...]
#
# --steps runs a subset (e.g. --steps=logs to reattach, --steps=delete to clean up).
# --dry-run prints the commands instead of running them. The run resumes from the newest
# checkpoint in --workdir, so after a spot preemption the same command continues it.
set -euo pipefail

name="" zone="" accelerator_type="v4-32" version="" config="" workdir="" project=""
spot=0 dry_run=0 steps="create,install,train,logs,delete"
overrides=()

usage_end=13  # the last line of the header comment, which --help prints
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"

script_arg() {
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator-type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --steps=*) steps="${1#*=}" ;;
    --spot) spot=1 ;;
    *) return 1 ;;
  esac
}
parse_args "$@"

for required in name zone; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_vm.sh: --${required}= is required" >&2
    exit 2
  fi
done

# The TPU software image that matches the chip generation.
if [[ -z "$version" ]]; then
  case "$accelerator_type" in
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi


gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
if [[ -n "$project" ]]; then where+=(--project="$project"); fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
archive="/tmp/flip_jax-${name}.tar.gz"

step_create() {
  local extra=()
  if ((spot)); then extra+=(--spot); fi
  run "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" \
    --version="$version" "${extra[@]}"
}

step_install() {
  # The committed tree, as on every worker: the same code runs on all hosts.
  run git -C "$repo" archive --format=tar.gz --output="$archive" HEAD
  run "${gcloud_tpu[@]}" scp "$archive" "$name:flip_jax.tar.gz" "${where[@]}" --worker=all
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="rm -rf ~/flip_jax \
&& mkdir ~/flip_jax && tar -xzf ~/flip_jax.tar.gz -C ~/flip_jax \
&& pip install -q -c ~/flip_jax/requirements-lock.txt \"jax[tpu]\" -e ~/flip_jax"
}

step_train() {
  if [[ -z "$config" || -z "$workdir" ]]; then
    echo "tpu_vm.sh: the train step needs --config= and --workdir=" >&2
    exit 2
  fi
  local args
  args="$(printf ' %q' --config="$config" --workdir="$workdir" \
    --config.distributed.auto=true "${overrides[@]}")"
  # Detached from the ssh session; every worker logs to its own ~/train.log.
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="cd ~/flip_jax \
&& setsid nohup python -m flip_jax.main${args} > ~/train.log 2>&1 < /dev/null &"
}

step_logs() {
  # Follows worker 0's log until its training process exits.
  local follow="pid=\$(pgrep -o -f \"[f]lip_jax.main\") || { tail -n 50 ~/train.log; exit 0; }"
  follow+="; tail -n +1 -f --pid=\$pid ~/train.log"
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$follow"
}

step_delete() {
  run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
}

IFS=, read -r -a wanted <<< "$steps"
for step in "${wanted[@]}"; do
  case "$step" in
    create | install | train | logs | delete) "step_$step" ;;
    *) echo "tpu_vm.sh: unknown step $step (create, install, train, logs, delete)" >&2; exit 2 ;;
  esac
done
