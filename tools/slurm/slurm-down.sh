#!/usr/bin/env bash
# Stop the single-node Slurm that tools/slurm/slurm-up.sh started: cancel its jobs, then stop slurmd, slurmctld
# and munged (TERM, KILL after 20 s). Packages and config stay; --purge also clears Slurm's state and logs.
set -uo pipefail

say() { printf '[slurm-down] %s\n' "$*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cancel_jobs() {
  alive /run/slurmctld.pid && command -v squeue >/dev/null || return 0
  local jobs
  jobs="$(squeue -h -o %i 2>/dev/null)"
  [ -n "$jobs" ] || return 0
  say "cancelling $(echo "$jobs" | wc -l) job(s)"
  # shellcheck disable=SC2086
  scancel --full $jobs 2>/dev/null
  sleep 2
}

stop() {  # name pidfile
  local name=$1 pidfile=$2 pid i
  if alive "$pidfile"; then
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { say "$name still up after 20 s: KILL"; kill -KILL "$pid"; }
    say "$name stopped"
  fi
  rm -f "$pidfile"
}

cancel_jobs
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop munged /run/munge/munged.pid
if [ "${1:-}" = --purge ]; then
  rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/log/slurm/*
  say "state and logs purged"
fi
