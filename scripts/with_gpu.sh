#!/usr/bin/env bash
# Run a command on COUNT GPUs of a list that no other command started this way holds:
#   scripts/with_gpu.sh LOCK_DIR COUNT "0 1 2 3" command [arguments...]
# Each GPU has a lock file LOCK_DIR/.gpu-<id>.lock. The first COUNT GPUs whose flock(1) lock
# is free are taken; the command is exec'd with CUDA_VISIBLE_DEVICES listing them and holds
# the locks through its open files, so they are released when it exits, however it exits.
# This is only a lock per GPU, not a queue: make starts the runs (at most JOBS at a time) and
# JOBS defaults to the number of GPUs / COUNT, so a free set exists whenever a run starts;
# with a larger JOBS a run waits, trying again every second.
set -euo pipefail

if [ $# -lt 4 ]; then
	echo "usage: $0 LOCK_DIR COUNT \"GPU ids\" command [arguments...]" >&2
	exit 2
fi
lock_dir=$1 count=$2 gpus=$3
shift 3
mkdir -p "$lock_dir"
if [ "$(echo $gpus | wc -w)" -lt "$count" ]; then
	echo "$0: $count GPUs per run asked for, only \"$gpus\" given" >&2
	exit 2
fi

while :; do
	taken=() fds=()
	for id in $gpus; do
		exec {fd}>"$lock_dir/.gpu-$id.lock"
		if flock -n "$fd"; then
			taken+=("$id") fds+=("$fd")
			[ ${#taken[@]} -eq "$count" ] && break
		else
			exec {fd}>&-
		fi
	done
	if [ ${#taken[@]} -eq "$count" ]; then
		CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${taken[*]}")
		export CUDA_VISIBLE_DEVICES
		exec "$@"
	fi
	for fd in "${fds[@]}"; do exec {fd}>&-; done  # not enough free: let go, try again
	sleep 1
done
