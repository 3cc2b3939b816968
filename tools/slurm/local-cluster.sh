#!/usr/bin/env bash
# local-cluster.sh up|down|status — a real one-node Slurm cluster on loopback, for tests and CI.
#
# Debian's slurm-wlm + munge, daemons started directly (no systemd), no accounting
# database: the Snakemake slurm plugin must then poll with `squeue`
# (profiles/slurm sets slurm-status-command: squeue; MinJobAge keeps finished jobs visible).
# Runs as root. State, logs and pid files live under $INNOUT_SLURM_DIR.
set -euo pipefail

DIR=${INNOUT_SLURM_DIR:-/tmp/innout-slurm}
WAIT=${INNOUT_SLURM_WAIT:-90}
CONF=/etc/slurm/slurm.conf

log() { echo "[local-cluster] $*"; }
fail() { log "error: $*"; exit 1; }

running() {  # running PIDFILE NAME: the pid file names a live process called NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -d "/proc/$pid" ] && grep -q "^$2" "/proc/$pid/comm" 2>/dev/null
}

until_true() {  # until_true SECONDS COMMAND...: poll until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

install_packages() {
  local need=()
  for pkg in slurm-wlm munge; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return
  log "installing ${need[*]}"
  # package scripts must not start daemons on their own; we start them below
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "${need[@]}" >"$DIR/apt.log" 2>&1; then
    apt-get update -q >>"$DIR/apt.log" 2>&1
    apt-get install -y -q "${need[@]}" >>"$DIR/apt.log" 2>&1 || { rm -f /usr/sbin/policy-rc.d; fail "apt-get failed, see $DIR/apt.log"; }
  fi
  rm -f /usr/sbin/policy-rc.d
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge "$DIR/munge"
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  running "$DIR/munge/munged.pid" munged || runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid"
  until_true "$WAIT" bash -c 'munge -n | unmunge' || fail "munge does not work"
}

write_config() {
  local node line
  node=$(hostname -s)
  line=$(slurmd -C | head -n 1)  # this machine's CPUs and memory, as slurmd sees them
  install -d -o slurm -g slurm "$DIR/ctld" "$DIR/log"
  install -d "$DIR/spool" /etc/slurm
  cat >"$CONF" <<CONFEOF
# written by innout tools/slurm/local-cluster.sh
ClusterName=innout-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for 5 min: the plugin's status polls rely on it
MinJobAge=300
InactiveLimit=0
KillWait=10
$line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFEOF
}

up() {
  mkdir -p "$DIR"
  install_packages
  start_munge
  write_config
  running "$DIR/slurmctld.pid" slurmctld || /usr/sbin/slurmctld
  until_true "$WAIT" bash -c 'scontrol ping | grep -q UP' || fail "slurmctld not up, see $DIR/log/slurmctld.log"
  running "$DIR/slurmd.pid" slurmd || /usr/sbin/slurmd
  local node deadline state
  node=$(hostname -s); deadline=$((SECONDS + WAIT))
  while state=$(sinfo -h -n "$node" -o %T 2>/dev/null); [ "$state" != idle ]; do
    case "$state" in down*|drain*) scontrol update nodename="$node" state=resume || true ;; esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node $node is '$state', see $DIR/log/slurmd.log"
    sleep 0.5
  done
  (cd "$DIR" && timeout 60 srun -N1 -n1 true) || fail "srun test job failed"
  log "cluster up: partition debug, node $node"
}

stop() {  # stop PIDFILE NAME
  running "$1" "$2" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
  [ -d "/proc/$pid" ] && kill -9 "$pid"
  rm -f "$1"
}

down() {
  if running "$DIR/slurmctld.pid" slurmctld; then
    squeue -h -o %i | xargs -r scancel 2>/dev/null || true
  fi
  stop "$DIR/slurmd.pid" slurmd
  stop "$DIR/slurmctld.pid" slurmctld
  stop "$DIR/munge/munged.pid" munged
  log "cluster down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
