#!/usr/bin/env bash
# One writer per target: run the command that makes TARGET while holding TARGET's lock.
#   scripts/claim.sh [-m PARTIAL] [-t "LOG STAGE INVOCATION"] [-l LOCK] TARGET [PREREQ...] -- CMD...
# The lock is flock(1) on LOCK (default: TARGET's folder/.<name>.lock; -l for a target whose
# folder must hold nothing else), held by this script and released when it exits, however
# it exits (a killed holder frees it). A second make that wants the same target while the
# first is making it waits; once it holds the lock it runs nothing if TARGET exists and is
# newer than every PREREQ (make's own rule: another make finished it since this one decided
# to make it; `make -B` therefore remakes only missing targets, and a target without
# prerequisites is made only when missing). With -m, the command writes PARTIAL, which is
# renamed to TARGET only after the command succeeded, still under the lock, so that no
# waiter sees the target before it is whole. With -t, the start and end of the command are
# appended to the timings log LOG (attrlib/timing.py) only when this process makes the
# target: a make that waited and found the target made counts no time.
set -uo pipefail

partial= timings= lockfile=
while [ $# -ge 2 ] && case $1 in -m | -t | -l) true ;; *) false ;; esac do
	case $1 in
	-m) partial=$2 ;;
	-t) timings=$2 ;;
	-l) lockfile=$2 ;;
	esac
	shift 2
done
if [ $# -lt 3 ]; then
	echo "usage: $0 [-m PARTIAL] [-t 'LOG STAGE INVOCATION'] [-l LOCK] TARGET [PREREQ...] -- CMD..." >&2
	exit 2
fi
target=$1
shift
prerequisites=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
	prerequisites+=("$1")
	shift
done
if [ "${1:-}" != -- ] || [ $# -lt 2 ]; then
	echo "$0: no command after --" >&2
	exit 2
fi
shift

lockfile=${lockfile:-$(dirname "$target")/.$(basename "$target").lock}
mkdir -p "$(dirname "$lockfile")"
exec {lock}>"$lockfile"
if ! flock -n "$lock"; then
	echo "$target: another process is making it; waiting for it" >&2
	flock "$lock"
fi
# make decided to run this before the lock was ours: another make may have finished it since
if [ -e "$target" ]; then
	fresh=1
	for p in "${prerequisites[@]+"${prerequisites[@]}"}"; do
		[ "$target" -nt "$p" ] || fresh=0
	done
	if [ $fresh = 1 ]; then
		echo "$target: made by another process meanwhile; not made again" >&2
		exit 0
	fi
fi
log_event() {  # start|end: one short line, appended whole even by parallel writers
	[ -z "$timings" ] && return
	read -r log stage invocation <<<"$timings"
	echo "$1 $stage $(date +%s.%N) $invocation $target" >>"$log"
}
log_event start
"$@" {lock}>&- || exit
if [ -n "$partial" ]; then
	mv "$partial" "$target"
fi
log_event end
