#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine (Debian 12, as root), for ltbench's Slurm tests and
# for trying `ltbench sweep --launcher slurm` without a cluster. Usage:
#
#   bash scripts/slurm-cluster.sh up       # install what is missing, start every daemon, wait until idle
#   bash scripts/slurm-cluster.sh status   # daemons, node and queue
#   bash scripts/slurm-cluster.sh down     # cancel queued jobs, stop the daemons this script started
#
# Accounting is part of the cluster because submitit reads job states with `sacct`: MariaDB
# (socket only) <- slurmdbd <- slurmctld <- slurmd, all authenticated by munged. There is no systemd
# here, so each daemon is started by hand, in the foreground of its own session, and its PID is kept
# in $LTBENCH_SLURM_DIR/run; `down` stops exactly those PIDs. Everything else the cluster writes
# (database, spool, state, logs) lives under $LTBENCH_SLURM_DIR (default /var/lib/ltbench-slurm),
# except the two config files Slurm's commands look for: /etc/slurm/slurm.conf and slurmdbd.conf.
# Those carry a marker line and are never written over when they belong to someone else.
set -euo pipefail

STATE=${LTBENCH_SLURM_DIR:-/var/lib/ltbench-slurm}
CLUSTER=${LTBENCH_SLURM_CLUSTER:-ltbench-test}
ETC=/etc/slurm
MARKER="# written by ltbench scripts/slurm-cluster.sh"
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; `down` stops in reverse
RUN=$STATE/run
LOG=$STATE/log
SOCKET=$RUN/mysqld.sock
NODE=$(hostname -s)

say() { echo "== slurm-cluster: $*"; }
die() { echo "slurm-cluster: $*" >&2; exit 1; }

pid_of() {  # the recorded PID of a daemon, if that process is still this daemon
  local file=$RUN/$1.pid pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1:0:15}" ] && echo "$pid"
}

any_alive() {
  local pid
  for pid in "$@"; do [ -d "/proc/$pid" ] && return 0; done
  return 1
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll every 0.2 s until COMMAND succeeds
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up within ${seconds}s; see $LOG/"
}

start() {  # start NAME COMMAND...: run a foreground daemon in its own session, record its PID
  local name=$1
  shift
  if pid_of "$name" >/dev/null; then return 0; fi
  setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

write_if_changed() {  # write_if_changed FILE MODE < content: keeps the file (and its mtime) if equal
  local file=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -e "$file" ] && ! grep -qxF "$MARKER" "$file"; then
    rm -f "$tmp"
    die "$file exists and was not written by this script: refusing to overwrite a real Slurm setup"
  fi
  if cmp -s "$tmp" "$file" 2>/dev/null; then
    rm -f "$tmp"
  else
    install -m "$mode" "$tmp" "$file"
    rm -f "$tmp"
  fi
}

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem * 9 / 10))
  mkdir -p "$ETC"
  write_if_changed "$ETC/slurm.conf" 644 <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job restarts after ~10 s instead of waiting for the default 120 s credential expiry
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# schedule as soon as jobs arrive: a 20-task array finishes in ~7 s instead of ~24 s
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# reject impossible requests at submission instead of leaving them pending forever
EnforcePartLimits=ALL
KillWait=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.daemon.pid
LogFile=$LOG/slurmdbd.log
EOF
  cat >"$STATE/my.cnf" <<EOF
[mariadbd]
datadir=$STATE/mysql
socket=$SOCKET
pid-file=$RUN/mariadbd.daemon.pid
log-error=$LOG/mariadbd.err
skip-networking
innodb_buffer_pool_size=32M
EOF
}

cluster_registered() {
  sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"
}

node_ready() {
  sinfo -h -n "$NODE" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

cmd_up() {
  local t0=$SECONDS
  [ "$(id -u)" -eq 0 ] || die "needs root (the daemons run as root): sudo bash $0 up"
  install_packages
  mkdir -p "$RUN" "$LOG" "$STATE/ctld" "$STATE/spool"
  write_configs

  mkdir -p /run/munge && chown munge: /run/munge
  start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  wait_for 10 munged sh -c 'munge -n | unmunge'

  if [ ! -d "$STATE/mysql/mysql" ]; then
    say "initialising the accounting database in $STATE/mysql"
    mkdir -p "$STATE/mysql" && chown mysql: "$STATE/mysql"
    chown mysql: "$RUN" "$LOG"
    mariadb-install-db --defaults-file="$STATE/my.cnf" --user=mysql --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG/mariadb-install-db.out" 2>&1
  fi
  chown mysql: "$RUN" "$LOG"
  start mariadbd /usr/sbin/mariadbd --defaults-file="$STATE/my.cnf" --user=mysql
  wait_for 30 mariadbd mariadb-admin --socket="$SOCKET" ping

  # slurmdbd reaches MariaDB through libmariadb, which takes the socket path from MYSQL_UNIX_PORT
  MYSQL_UNIX_PORT=$SOCKET start slurmdbd /usr/sbin/slurmdbd -D
  wait_for 30 slurmdbd sacctmgr -n show cluster
  cluster_registered || sacctmgr -i add cluster "$CLUSTER" >/dev/null

  start slurmctld /usr/sbin/slurmctld -D
  start slurmd /usr/sbin/slurmd -D
  wait_for 60 "node $NODE" node_ready
  say "up in $((SECONDS - t0)) s: cluster $CLUSTER, node $NODE ($(nproc) CPUs), state in $STATE"
}

cmd_status() {
  local name pid rc=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  if [ "$rc" -eq 0 ]; then
    sinfo
    squeue
  fi
  return "$rc"
}

cmd_down() {
  local i name pid pids=()
  if pid_of slurmctld >/dev/null; then  # jobs of this test cluster only: it has no other users
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RUN/$name.pid"
  done
  for ((i = 0; i < 75; i++)); do  # up to 15 s for all of them, then KILL
    any_alive "${pids[@]}" || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  say "down (state kept in $STATE; remove it to start from nothing)"
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  *) echo "usage: $0 up|status|down" >&2; exit 2 ;;
esac
