#!/usr/bin/env bash
# A single-node Slurm on this machine for the launcher tests: `bash .ci/slurm.sh up` installs (Debian's
# packages, as root) and starts munged, slurmctld and slurmd; `bash .ci/slurm.sh down` stops what `up`
# started, once no other user of it is left.  Needs root; prints why and exits 1 otherwise.
#
# Several CI runs (two clones, two sessions) may share one Slurm: each `up` registers its owner
# ($PAI_SLURM_OWNER, a live pid; default the caller's pid) in $STATE/users, and `down` only removes its own
# entry; the daemons stop when the last live owner is gone, and only those that an `up` started.  Jobs are
# never cancelled here: the tests cancel their own.
set -euo pipefail
STATE=/tmp/pai-slurm
OWNER=${PAI_SLURM_OWNER:-$PPID}
mkdir -p "$STATE/users"
exec 9>"$STATE/lock"
flock 9

up() {
  if [ "$(id -u)" != 0 ]; then echo "slurm.sh: needs root to install and start Slurm" >&2; exit 1; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmd slurmctld slurm-client munge >/dev/null
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 9>&- && echo munged >> "$STATE/started"
  fi
  local host cpus mem
  host=$(hostname); cpus=$(nproc); mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pai
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
JobRequeue=1
KillWait=5
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  touch "$STATE/users/$OWNER"
  if ! pgrep -x slurmctld >/dev/null; then slurmctld </dev/null >/dev/null 2>&1 9>&- && echo slurmctld >> "$STATE/started"; fi
  if ! pgrep -x slurmd >/dev/null; then slurmd </dev/null >/dev/null 2>&1 9>&- && echo slurmd >> "$STATE/started"; fi
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then echo "slurm.sh: single-node Slurm is up ($host, $cpus CPUs)"; return 0; fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm.sh: Slurm did not come up; see /var/log/slurm/" >&2
  exit 1
}

down() {
  rm -f "$STATE/users/$OWNER"
  for user in "$STATE"/users/*; do  # owners whose process is gone no longer hold it
    [ -e "$user" ] || continue
    kill -0 "$(basename "$user")" 2>/dev/null || rm -f "$user"
  done
  if compgen -G "$STATE/users/*" >/dev/null; then
    echo "slurm.sh: Slurm left running for its other users: $(ls "$STATE/users" | tr '\n' ' ')"
    return 0
  fi
  [ -f "$STATE/started" ] || return 0
  for daemon in slurmd slurmctld munged; do
    if grep -qx "$daemon" "$STATE/started"; then pkill -x "$daemon" || true; fi
  done
  rm -f "$STATE/started"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
