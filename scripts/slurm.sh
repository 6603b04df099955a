#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1 for tests and trials: Debian's slurm-wlm and munge, started
# directly (no systemd), everything under one folder (config, keys, sockets, state, logs), nothing in /etc.
#
#   scripts/slurm.sh start [DIR]    start munged, slurmctld and slurmd; wait until the node is idle
#   scripts/slurm.sh status [DIR]   the node as sinfo sees it (exit 1 when the cluster is not up)
#   scripts/slurm.sh stop [DIR]     stop the daemons (the folder is kept: logs)
#
# DIR defaults to .slurm in the checkout. Commands use the cluster through its config file:
#   export SLURM_CONF=DIR/slurm.conf      (sbatch, squeue, scancel, sinfo; a sweep's jobs inherit it)
# The node has this machine's CPUs and 90 % of its memory; in a container without cgroups and systemd,
# processes are tracked through /proc (proctrack/linuxproc, task/none). No accounting (no slurmdbd):
# epochgraph's launcher follows its jobs with squeue, not sacct.
set -euo pipefail

cmd=${1:-}
DIR=${2:-$(cd "$(dirname "$0")/.." && pwd)/.slurm}
case "$cmd" in start|stop|status) ;; *)
  echo "usage: scripts/slurm.sh start|stop|status [DIR]" >&2; exit 2 ;;
esac
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    echo "slurm.sh: $tool not found; install Debian's slurm-wlm and munge (make setup)" >&2; exit 2; }
done
export PATH="$PATH:/usr/sbin"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF="$DIR/slurm.conf"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # pid file, name: SIGTERM, then SIGKILL if it is still there after 20 s
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then echo "slurm.sh: $name ($pid) did not stop; killing it" >&2; kill -9 "$pid" || true; fi
  rm -f "$pidfile"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_config() {
  local user node cpus mem_mb ctld_port slurmd_port
  user=$(id -un)
  node=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/log"
  chmod 711 "$DIR/munge"  # munged: the socket folder must be searchable by all
  cat > "$SLURM_CONF" <<EOF
# written by scripts/slurm.sh: a one-node cluster on 127.0.0.1
ClusterName=epochgraph
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups, no systemd: processes are followed through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
LaunchParameters=enable_nss_slurm
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
# a cancelled job has this long to close its runs between SIGTERM and SIGKILL (SLURM's default)
KillWait=30
# finished jobs stay visible to squeue this long (the launcher reads their end state there)
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  [ -f "$DIR/munge/munge.key" ] || {
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
  }
}

status() {
  pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && pid_alive "$DIR/munge/munged.pid" \
    && sinfo -h -N -o "%N %T %c" 2>/dev/null
}

case "$cmd" in
status)
  if out=$(status); then echo "$out (SLURM_CONF=$SLURM_CONF)"; else echo "slurm.sh: no cluster running in $DIR" >&2; exit 1; fi ;;
stop)
  stop_daemon "$DIR/slurmd.pid" slurmd
  stop_daemon "$DIR/slurmctld.pid" slurmctld
  stop_daemon "$DIR/munge/munged.pid" munged
  echo "slurm.sh: stopped the cluster in $DIR" ;;
start)
  if status >/dev/null 2>&1; then echo "slurm.sh: already running; export SLURM_CONF=$SLURM_CONF"; exit 0; fi
  # a half-started or crashed cluster: stop what is left and start afresh
  stop_daemon "$DIR/slurmd.pid" slurmd
  stop_daemon "$DIR/slurmctld.pid" slurmctld
  stop_daemon "$DIR/munge/munged.pid" munged
  write_config
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --log-file="$DIR/log/munged.log" --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed"
  # -c: a clean start (no jobs from an earlier cluster in this folder); -i: ignore stale state
  slurmctld -c -i -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$(hostname -s)"
  for _ in $(seq 1 120); do
    state=$(sinfo -h -N -o "%T" 2>/dev/null | head -1 || true)
    case "$state" in idle|mixed|allocated) break ;; esac
    sleep 1
  done
  if [ "${state:-}" != idle ] && [ "${state:-}" != mixed ] && [ "${state:-}" != allocated ]; then
    echo "slurm.sh: the node did not come up (state '${state:-none}'); logs in $DIR/log:" >&2
    for f in "$DIR"/log/*.log; do echo "== $f"; tail -n 5 "$f"; done >&2 || true
    exit 1
  fi
  echo "slurm.sh: cluster up, node $(hostname -s) ($(nproc) CPUs) $state; export SLURM_CONF=$SLURM_CONF" ;;
esac
