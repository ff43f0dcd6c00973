#!/usr/bin/env bash
# Multi-node DeepSpeed training, started on the first node of a hostfile.
#
#   bash infra/deepspeed/launch_multinode.sh HOSTFILE [pretrain train options...]
#   e.g. bash infra/deepspeed/launch_multinode.sh ~/hostfile \
#          --data /data/tokens --output /data/runs/1b --model 1b --set train.global_batch_size=512
#   DRY_RUN=1 ... checks the hostfile, prints the plan and the command, starts nothing.
#
# It checks the hostfile (the format DeepSpeed parses: "<host> slots=<n>"), then that every
# node answers ssh, holds the repository at this same path and has at least its slots
# in GPUs, then runs `pretrain train --set train.hostfile=HOSTFILE ...`: our launcher
# (tasks/train/launch.py) starts DeepSpeed's runner, which starts the ranks of every node
# over pdsh/ssh. The batch arithmetic (micro x accumulation x world size = global batch)
# is checked by the ranks at start-up, the error naming every factor.
#
# What the nodes need:
#   - passwordless ssh from this node to every host, by the names in the hostfile;
#   - the same image (infra/Dockerfile.cuda) or the same repository + venv at the same path;
#   - the token shards and the run folder on a shared filesystem, at the same path;
#   - NCCL able to reach every node: copy infra/deepspeed/deepspeed_env.example to
#     infra/deepspeed/deepspeed_env and set the interfaces of your fabric there.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PRETRAIN=${PRETRAIN:-pretrain}
[[ $# -ge 1 ]] || { echo "usage: $0 HOSTFILE [pretrain train options...]" >&2; exit 2; }
HOSTFILE=$(realpath "$1")
shift
[[ -f "$HOSTFILE" ]] || { echo "error: hostfile $HOSTFILE not found" >&2; exit 2; }

# host and slots per line, comments and blank lines skipped; anything else is an error
# that names the line (DeepSpeed would stop at it too, in every rank).
HOSTS=()
SLOTS=()
line_no=0
while IFS= read -r line || [[ -n "$line" ]]; do
  line_no=$((line_no + 1))
  entry=${line%%#*}
  [[ -z "${entry//[[:space:]]/}" ]] && continue
  if [[ "$entry" =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([0-9]+)[[:space:]]*$ ]]; then
    HOSTS+=("${BASH_REMATCH[1]}")
    SLOTS+=("${BASH_REMATCH[2]}")
  else
    echo "error: $HOSTFILE line $line_no: expected '<host> slots=<GPUs>', got '$line'" >&2
    exit 2
  fi
done < "$HOSTFILE"
[[ ${#HOSTS[@]} -gt 0 ]] || { echo "error: $HOSTFILE lists no nodes" >&2; exit 2; }
dupes=$(printf '%s\n' "${HOSTS[@]}" | sort | uniq -d)
[[ -z "$dupes" ]] || { echo "error: $HOSTFILE lists a node twice: $dupes" >&2; exit 2; }
WORLD=0
for s in "${SLOTS[@]}"; do WORLD=$((WORLD + s)); done
echo "hostfile $HOSTFILE: ${#HOSTS[@]} nodes, $WORLD GPUs (world size): $(paste -sd' ' <(for i in "${!HOSTS[@]}"; do echo "${HOSTS[$i]}:${SLOTS[$i]}"; done))"

if [[ -f "$REPO/infra/deepspeed/deepspeed_env" ]]; then
  export DS_ENV_FILE="$REPO/infra/deepspeed/deepspeed_env"
fi
CMD=("$PRETRAIN" train --set "train.hostfile=$HOSTFILE" "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "dry run; would run: ${CMD[*]}"
  exit 0
fi

for i in "${!HOSTS[@]}"; do
  host=${HOSTS[$i]}
  gpus=$(ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" \
         "test -d '$REPO' && nvidia-smi --list-gpus | wc -l") \
    || { echo "error: node $host: no passwordless ssh, or no $REPO there" >&2; exit 1; }
  if (( gpus < SLOTS[$i] )); then
    echo "error: node $host has $gpus GPUs, the hostfile gives it slots=${SLOTS[$i]}" >&2
    exit 1
  fi
done
cd "$REPO"
exec "${CMD[@]}"
