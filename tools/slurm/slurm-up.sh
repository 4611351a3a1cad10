#!/usr/bin/env bash
# A real single-node Slurm (Debian's slurm-wlm 22.05 + munge) on localhost, for the pipeline's Slurm tests and for
# trying -profile slurm on one machine. Installs what is missing, writes the config, starts munged, slurmctld and
# slurmd as plain background daemons (no systemd) and waits for the node to be idle. Idempotent: with everything
# up it only checks. Take it down with tools/slurm/slurm-down.sh.
#
#   sudo tools/slurm/slurm-up.sh
#
# Env: SLURM_PARTITIONS (default "cpu debug"; the first is the default partition), SLURM_CLUSTER (default local)
set -euo pipefail

say() { printf '[slurm-up] %s\n' "$*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
[ "$(id -u)" = 0 ] || { echo "slurm-up.sh: run as root (apt-get, daemons)" >&2; exit 2; }

install_packages() {
  local need=() pkg
  for pkg in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return
  say "apt-get install ${need[*]}"
  apt-get update -qq
  # the packages' postinst may not start services here; the daemons are started below
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

prepare_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
}

# The node line is what `slurmd -C` measures, so slurmd's registration matches it (a node that reports less than
# its configured memory or CPUs is drained).
write_slurm_conf() {
  local host=$1 cluster=$2 node parts
  node="$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=${host} NodeAddr=127.0.0.1/")"
  read -r -a parts <<<"${SLURM_PARTITIONS:-cpu debug}"
  install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  {
    cat <<CONF
# written by tools/slurm/slurm-up.sh: one node on localhost
ClusterName=${cluster}
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroup plugins on this kind of VM (hybrid cgroups): processes are tracked by their parent pids
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# without cgroups, --mem is enforced by polling: a job over its memory is killed within about 5 s
JobAcctGatherFrequency=task=5
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
# one line per finished job: proof that a task went through Slurm
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=120
SlurmdTimeout=300
InactiveLimit=0
KillWait=30
MinJobAge=300
Waittime=0
${node} State=UNKNOWN
CONF
    local default=YES p
    for p in "${parts[@]}"; do
      echo "PartitionName=${p} Nodes=${host} Default=${default} MaxTime=INFINITE State=UP"
      default=NO
    done
  } > /etc/slurm/slurm.conf.new
  printf '%s\n' '# written by tools/slurm/slurm-up.sh: nothing constrained' 'CgroupAutomount=no' \
    'ConstrainCores=no' 'ConstrainRAMSpace=no' 'ConstrainDevices=no' > /etc/slurm/cgroup.conf.new
  config_changed=0
  local f
  for f in slurm.conf cgroup.conf; do
    if cmp -s "/etc/slurm/$f.new" "/etc/slurm/$f"; then rm -f "/etc/slurm/$f.new"
    else mv "/etc/slurm/$f.new" "/etc/slurm/$f"; config_changed=1; fi
    chmod 0644 "/etc/slurm/$f"
  done
}

wait_for() {  # what pidfile command...
  local what=$1 pidfile=$2 i
  shift 2
  for i in $(seq 100); do alive "$pidfile" && "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "slurm-up.sh: $what did not start" >&2
  tail -20 "/var/log/slurm/$what.log" >&2 2>/dev/null || true
  exit 1
}

start_daemons() {
  if ! alive /run/munge/munged.pid; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    wait_for munged /run/munge/munged.pid true
    say "munged started"
  fi
  munge -n | unmunge >/dev/null || { echo "slurm-up.sh: munge round trip failed" >&2; exit 1; }
  if alive /run/slurmctld.pid; then
    [ "$config_changed" = 1 ] && { say "config changed: scontrol reconfigure"; scontrol reconfigure || true; }
  else
    rm -f /run/slurmctld.pid
    /usr/sbin/slurmctld
    wait_for slurmctld /run/slurmctld.pid scontrol ping
    say "slurmctld started"
  fi
  if ! alive /run/slurmd.pid; then
    rm -f /run/slurmd.pid
    /usr/sbin/slurmd
    wait_for slurmd /run/slurmd.pid true
    say "slurmd started"
  fi
}

wait_for_idle_node() {
  local host=$1 state="" i
  for i in $(seq 60); do
    state="$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -1)"
    case "$state" in
      idle | mixed | allocated | completing) say "node $host $state"; return ;;
      down* | drain* | fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  echo "slurm-up.sh: node $host is '${state:-unknown}'" >&2
  sinfo -R >&2 || true
  exit 1
}

started=$SECONDS
host="$(hostname -s)"
install_packages
prepare_munge
write_slurm_conf "$host" "${SLURM_CLUSTER:-local}"
start_daemons
wait_for_idle_node "$host"
say "up in $((SECONDS - started)) s"
sinfo
