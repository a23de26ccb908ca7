#!/usr/bin/env bash
# devcluster.sh - a real one-node SLURM cluster with accounting, for integration tests and CI.
#
# Usage: bash slurm/devcluster.sh install|start|stop|status|restart|up
#
#   install  apt-get the Debian packages (only when binaries are missing)
#   start    start munge, MariaDB, slurmdbd, slurmctld, slurmd (idempotent: a healthy
#            cluster is left alone; a partly running one is repaired)
#   stop     stop all five daemons (idempotent)
#   status   exit 0 iff sinfo answers and sacct works; prints a short summary
#   restart  stop + start
#   up       install + start
#
# Needs root and Debian (12). There is no init system here: every daemon is started
# detached (setsid/nohup, stdio away from the caller) so it outlives this script.
# Overridable: LAUNCHER_SLURM_STATE (default /var/lib/launcher-slurm),
#              LAUNCHER_SLURM_LOGS (default /var/log/launcher-slurm).
set -euo pipefail
# The daemons live in /usr/sbin, which a caller's PATH may lack.
export PATH=/usr/sbin:/sbin:$PATH

readonly CLUSTER=launcher-dev
readonly PARTITION=debug
readonly STATE_DIR=${LAUNCHER_SLURM_STATE:-/var/lib/launcher-slurm}
readonly LOG_DIR=${LAUNCHER_SLURM_LOGS:-/var/log/launcher-slurm}
readonly RUN_DIR=$STATE_DIR/run
readonly CONF_DIR=/etc/slurm
readonly SLURM_CONF=$CONF_DIR/slurm.conf
readonly SLURMDBD_CONF=$CONF_DIR/slurmdbd.conf
readonly CGROUP_CONF=$CONF_DIR/cgroup.conf
readonly HIGH_QOS=high
readonly GRACE_SECONDS=10
readonly CRED_EXPIRE=20
readonly DB_NAME=slurm_acct_db
readonly DB_USER=slurm
# Local-only credential: MariaDB listens on this machine only, for this dev cluster.
readonly DB_PASS=launcher-dev-slurmdbd
readonly MYSQL_SOCKET=/run/mysqld/mysqld.sock
readonly MYSQL_PIDFILE=/run/mysqld/mysqld.pid
readonly MUNGE_PIDFILE=/run/munge/munged.pid
NODE=$(hostname -s)
readonly NODE
readonly PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
readonly BINARIES=(munged munge unmunge mysqld_safe mysql mysqladmin slurmdbd slurmctld slurmd
                   sinfo sbatch sacct sacctmgr scontrol)
# Daemons get a clean environment, so nothing from the caller (a venv, SLURM_* of an
# enclosing job, CI variables) leaks into them or into the jobs they start.
readonly DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

# Set when start rewrote a config file, so running daemons must be restarted.
SLURM_CONF_CHANGED=0
SLURMDBD_CONF_CHANGED=0

# ---------------------------------------------------------------- output helpers

step() { echo "devcluster: $*"; }

# fail DAEMON MESSAGE [LOGFILE...]: say which daemon failed, show its log tail, exit 1.
fail() {
  local daemon=$1 msg=$2 log
  shift 2
  echo "devcluster: FAILED: $daemon: $msg" >&2
  for log in "$@"; do
    [[ -s $log ]] || continue
    echo "---- last 25 lines of $log ----" >&2
    tail -n 25 "$log" >&2
  done
  exit 1
}

# wait_until SECONDS CMD...: poll CMD every 0.2 s until it succeeds; false on timeout.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- process helpers

# wait_ready NAME PIDFILE SECONDS CMD...: wait until CMD succeeds, but give up early when
# the daemon NAME has died (no live process 3 s after the start). On failure, WAIT_ERROR
# says which of the two happened.
WAIT_ERROR=
wait_ready() {
  local name=$1 pidfile=$2 seconds=$3 started=$SECONDS
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - started >= 3)) && [[ -z $(daemon_pids "$pidfile" "$name") ]]; then
      WAIT_ERROR="$name exited during start-up"
      return 1
    fi
    if ((SECONDS - started >= seconds)); then
      WAIT_ERROR="$name runs but is not ready after $seconds s"
      return 1
    fi
    sleep 0.2
  done
}

# pid_alive PIDFILE NAME: the pid file names a live process whose command is NAME.
pid_alive() {
  local pid
  [[ -r $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# daemon_pids PIDFILE NAME: pids of the daemon (from its pid file, else by exact name).
daemon_pids() {
  if pid_alive "$1" "$2"; then cat "$1"; else pgrep -x "$2" || true; fi
}

# spawn_detached OUTFILE CMD...: run CMD in its own session, cwd /, clean env, stdin
# from /dev/null, stdout/stderr to OUTFILE, no other inherited fds, so that it neither
# holds the caller's pipes or our lock nor dies with the caller's process group.
spawn_detached() {
  local out=$1
  shift
  (
    close_inherited_fds
    cd /
    exec setsid nohup "${DAEMON_ENV[@]}" "$@" </dev/null >>"$out" 2>&1
  ) &
}

# close_inherited_fds: close every fd above 2 (our lock fd 9, pipes of the caller's
# harness), so a long-lived daemon keeps none of them open.
close_inherited_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    if ((fd > 2)); then eval "exec $fd>&-"; fi
  done
}

# all_dead PID...: none of the processes exists any more.
all_dead() {
  local pid
  for pid in "$@"; do
    ! kill -0 "$pid" 2>/dev/null || return 1
  done
}

# stop_daemon NAME PIDFILE [quiet]: TERM, wait up to 15 s, then KILL. "quiet": say
# nothing when it was not running.
stop_daemon() {
  local name=$1 pidfile=$2 quiet=${3:-} pids
  pids=$(daemon_pids "$pidfile" "$name")
  if [[ -z $pids ]]; then
    [[ -n $quiet ]] || step "$name: not running"
    return 0
  fi
  step "$name: stopping (pid ${pids//$'\n'/ })"
  # shellcheck disable=SC2086 # word splitting of the pid list is intended
  kill -TERM $pids 2>/dev/null || true
  # shellcheck disable=SC2086
  if ! wait_until 15 all_dead $pids; then
    step "$name: still alive after 15 s, sending KILL"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- install

binaries_present() {
  local b
  for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || return 1
  done
}

install_packages() {
  if binaries_present; then
    step "install: packages already present"
    return 0
  fi
  [[ $EUID -eq 0 ]] || fail install "must run as root (apt-get)"
  take_lock
  if binaries_present; then # installed meanwhile by a parallel call
    step "install: packages already present"
    return 0
  fi
  step "install: apt-get install ${PACKAGES[*]} (about a minute)"
  # Keep package scripts from starting services themselves (the Docker convention);
  # this script starts them, detached, in its own way.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  } >"/tmp/launcher-devcluster-apt.log" 2>&1 || rc=$?
  if ((created_policy)); then rm -f "$policy"; fi
  ((rc == 0)) || fail apt-get "exit code $rc" /tmp/launcher-devcluster-apt.log
  binaries_present || fail install "packages installed but binaries still missing"
  step "install: done"
}

# ---------------------------------------------------------------- munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then
    step "munge: already running"
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    step "munge: creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  # A munged that runs but does not answer is replaced.
  stop_daemon munged "$MUNGE_PIDFILE" quiet
  install -d -o munge -g munge -m 755 /run/munge
  # A dead munged leaves its socket and pid file behind; it refuses to start over them.
  pid_alive "$MUNGE_PIDFILE" munged || rm -f /run/munge/munge.socket.2* "$MUNGE_PIDFILE"
  step "munge: starting munged"
  # --force: munged refuses to run as root otherwise.
  spawn_detached "$LOG_DIR/munged.out" munged --force
  wait_ready munged "$MUNGE_PIDFILE" 20 munge_ok || fail munged "$WAIT_ERROR (check: munge -n | unmunge)" \
    "$LOG_DIR/munged.out" /var/log/munge/munged.log
}

# ---------------------------------------------------------------- MariaDB

# The server binary is mariadbd (mysqld is a symlink to it); both names are checked,
# and mysqld_safe, which exits shortly after the server.
mysqld_gone() { ! pgrep -x 'mariadbd|mysqld|mysqld_safe' >/dev/null; }

mysql_ok() { mysqladmin --socket="$MYSQL_SOCKET" ping >/dev/null 2>&1; }

start_mariadb() {
  if mysql_ok; then
    step "mariadb: already running"
  else
    install -d -o mysql -g mysql -m 755 /run/mysqld
    # mysqld writes its own error log, so the file must belong to mysql.
    touch "$LOG_DIR/mariadb.log"
    chown mysql:mysql "$LOG_DIR/mariadb.log"
    step "mariadb: starting mysqld_safe"
    # --skip-syslog: Debian's config logs to syslog, and there is no syslog daemon here.
    # --skip-networking: socket only, no TCP port 3306 to collide with anything.
    # innodb settings: the values slurmdbd checks for (it logs an error otherwise).
    spawn_detached "$LOG_DIR/mariadb.out" mysqld_safe --user=mysql --skip-syslog \
      --log-error="$LOG_DIR/mariadb.log" --skip-networking \
      --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=512M
    wait_ready mysqld_safe /nonexistent 60 mysql_ok || fail mariadb "$WAIT_ERROR (check: mysqladmin ping)" \
      "$LOG_DIR/mariadb.log" "$LOG_DIR/mariadb.out"
  fi
  # Idempotent: root logs in over the socket (unix_socket auth), as Debian sets it up.
  mysql --socket="$MYSQL_SOCKET" -u root <<SQL || fail mariadb "creating $DB_NAME / $DB_USER failed"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
}

# ---------------------------------------------------------------- config files

# install_if_changed SRC DEST MODE: replace DEST by SRC when they differ; true if replaced.
install_if_changed() {
  if [[ -f $2 ]] && cmp -s "$1" "$2"; then
    rm -f "$1"
    return 1
  fi
  install -m "$3" "$1" "$2"
  rm -f "$1"
}

render_slurmdbd_conf() {
  cat <<EOF
# Written by slurm/devcluster.sh (launcher dev cluster); rewritten on each start.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
EOF
}

# RealMemory a bit under the machine's (5% less): more than slurmd finds drains the node.
real_memory_mb() { awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo; }

render_slurm_conf() {
  cat <<EOF
# Written by slurm/devcluster.sh (launcher dev cluster); rewritten on each start.
ClusterName=$CLUSTER
# Everything on loopback: the node name is this host's, its address 127.0.0.1.
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# A node that was down comes back by itself once slurmd registers with a valid config.
ReturnToService=2
# Preemption/requeue tests: a job of QOS "$HIGH_QOS" preempts (requeues) jobs of QOS
# normal, which first get their --signal signal (preempt_send_user_signal) and the
# QOS normal's GraceTime; KILL comes KillWait after TERM; jobs are requeueable.
PreemptType=preempt/qos
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
KillWait=5
JobRequeue=1
# A requeued job may start again cred_expire+1 s later (default 120: too slow for tests).
AuthInfo=cred_expire=$CRED_EXPIRE
MinJobAge=300
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# write_configs: (re)write the config files; sets *_CONF_CHANGED when one changed.
write_configs() {
  mkdir -p "$CONF_DIR"
  local tmp
  tmp=$(mktemp)
  render_slurmdbd_conf >"$tmp"
  # mode 600: slurmdbd refuses a config with the DB password readable by others.
  if install_if_changed "$tmp" "$SLURMDBD_CONF" 600; then
    SLURMDBD_CONF_CHANGED=1
    step "config: wrote $SLURMDBD_CONF"
  fi
  tmp=$(mktemp)
  render_slurm_conf >"$tmp"
  if install_if_changed "$tmp" "$SLURM_CONF" 644; then
    SLURM_CONF_CHANGED=1
    step "config: wrote $SLURM_CONF"
  fi
  # Empty cgroup.conf: silences slurmd's warning; no cgroup plugin is used.
  [[ -f $CGROUP_CONF ]] || : >"$CGROUP_CONF"
  chmod 600 "$SLURMDBD_CONF"
}

# configs_current: the files on disk are what this script would write now.
configs_current() {
  cmp -s <(render_slurm_conf) "$SLURM_CONF" && cmp -s <(render_slurmdbd_conf) "$SLURMDBD_CONF"
}

# ---------------------------------------------------------------- slurmdbd

slurmdbd_ok() {
  pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd &&
    timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1
}

start_slurmdbd() {
  if ((SLURMDBD_CONF_CHANGED)) && [[ -n $(daemon_pids "$RUN_DIR/slurmdbd.pid" slurmdbd) ]]; then
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
  fi
  if slurmdbd_ok; then
    step "slurmdbd: already running"
  else
    # A hung slurmdbd (alive, not answering) is replaced.
    [[ -z $(daemon_pids "$RUN_DIR/slurmdbd.pid" slurmdbd) ]] || stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
    step "slurmdbd: starting"
    spawn_detached "$LOG_DIR/slurmdbd.out" slurmdbd
    # The first start creates the accounting tables, which takes a few seconds.
    wait_ready slurmdbd "$RUN_DIR/slurmdbd.pid" 60 slurmdbd_ok || fail slurmdbd "$WAIT_ERROR (check: sacctmgr list cluster)" \
      "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.out"
  fi
  setup_accounting
}

# setup_accounting: the cluster (this also creates account root and user root) and the
# preemption QOS; each step only when missing, so a restart costs two queries.
setup_accounting() {
  if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
    step "slurmdbd: registering cluster $CLUSTER"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
      fail sacctmgr "add cluster $CLUSTER failed" "$LOG_DIR/slurmdbd.log"
  fi
  if ! sacctmgr -n -P list qos format=name 2>/dev/null | grep -qx "$HIGH_QOS"; then
    step "slurmdbd: adding QOS $HIGH_QOS (preempts QOS normal by requeue)"
    {
      sacctmgr -i add qos "$HIGH_QOS" &&
        sacctmgr -i modify qos where name="$HIGH_QOS" set priority=1000 preempt=normal preemptmode=requeue &&
        sacctmgr -i modify qos where name=normal set gracetime="$GRACE_SECONDS"
    } >/dev/null || fail sacctmgr "setting up QOS $HIGH_QOS failed" "$LOG_DIR/slurmdbd.log"
  fi
}

# ---------------------------------------------------------------- slurmctld / slurmd

slurmctld_ok() {
  pid_alive "$RUN_DIR/slurmctld.pid" slurmctld && timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'
}

start_slurmctld() {
  if ((SLURM_CONF_CHANGED)) && [[ -n $(daemon_pids "$RUN_DIR/slurmctld.pid" slurmctld) ]]; then
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
  fi
  if slurmctld_ok; then
    step "slurmctld: already running"
    return 0
  fi
  [[ -z $(daemon_pids "$RUN_DIR/slurmctld.pid" slurmctld) ]] || stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
  step "slurmctld: starting"
  spawn_detached "$LOG_DIR/slurmctld.out" slurmctld
  wait_ready slurmctld "$RUN_DIR/slurmctld.pid" 60 slurmctld_ok || fail slurmctld "$WAIT_ERROR (check: scontrol ping)" \
    "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.out"
}

slurmd_alive() { pid_alive "$RUN_DIR/slurmd.pid" slurmd; }

# node_state: e.g. idle, mixed, allocated, down*, drained, unknown* (a * means not responding).
node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
  if ((SLURM_CONF_CHANGED)) && [[ -n $(daemon_pids "$RUN_DIR/slurmd.pid" slurmd) ]]; then
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
  fi
  if slurmd_alive; then
    step "slurmd: already running"
  else
    [[ -z $(daemon_pids "$RUN_DIR/slurmd.pid" slurmd) ]] || stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    step "slurmd: starting"
    spawn_detached "$LOG_DIR/slurmd.out" slurmd
    wait_ready slurmd "$RUN_DIR/slurmd.pid" 30 slurmd_alive || fail slurmd "$WAIT_ERROR" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.out"
  fi
  wait_node_usable
}

# wait_node_usable: until sinfo shows the node idle (or busy); resumes a down/drained node.
wait_node_usable() {
  local deadline=$((SECONDS + 60)) state resumed=0
  while ((SECONDS < deadline)); do
    state=$(node_state)
    case $state in
      idle | mixed | allocated | completing)
        step "node $NODE: $state"
        return 0
        ;;
      down | drained | draining | drain | fail | failing)
        # Responding (no '*') but down or drained, e.g. left so by an earlier run.
        if ((!resumed)); then
          step "node $NODE: $state, resuming ($(sinfo -h -N -n "$NODE" -o %E))"
          scontrol update nodename="$NODE" state=resume || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.5
  done
  fail slurmd "node $NODE is '$(node_state)', not idle, after 60 s ($(sinfo -h -N -n "$NODE" -o %E 2>/dev/null))" \
    "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"
}

# ---------------------------------------------------------------- commands

# cluster_healthy: everything is up and current; used by start's fast path.
cluster_healthy() {
  binaries_present && configs_current && munge_ok && mysql_ok &&
    pid_alive "$RUN_DIR/slurmdbd.pid" slurmdbd && slurmctld_ok && slurmd_alive && node_usable
}

make_dirs() {
  mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$RUN_DIR" "$LOG_DIR"
}

# take_lock: one install/start/stop at a time (parallel tests may all call start). The
# lock (fd 9) is held until this script exits; taking it twice is a no-op.
LOCKED=0
take_lock() {
  ((!LOCKED)) || return 0
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/devcluster.lock"
  flock -w 300 9 || fail devcluster "could not lock $STATE_DIR/devcluster.lock in 300 s"
  LOCKED=1
}

cmd_start() {
  [[ $EUID -eq 0 ]] || fail devcluster "must run as root"
  binaries_present || fail devcluster "SLURM/munge/MariaDB not installed: run '$0 install' (or up)"
  take_lock
  if cluster_healthy; then
    step "cluster $CLUSTER already up (node $NODE $(node_state))"
    return 0
  fi
  make_dirs
  start_munge
  start_mariadb
  write_configs
  start_slurmdbd
  start_slurmctld
  start_slurmd
  step "cluster $CLUSTER up; logs in $LOG_DIR"
}

cmd_stop() {
  take_lock
  stop_daemon slurmd "$RUN_DIR/slurmd.pid"
  stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
  stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
  stop_mariadb
  stop_daemon munged "$MUNGE_PIDFILE"
  step "stopped"
}

stop_mariadb() {
  if mysql_ok; then
    step "mariadb: stopping"
    # A clean shutdown makes mysqld_safe exit too (killing mysqld alone makes it respawn).
    mysqladmin --socket="$MYSQL_SOCKET" shutdown || true
    wait_until 30 mysqld_gone || true
  fi
  # Leftovers (a hung server, or mysqld_safe without a server). The server first: on
  # TERM it shuts down cleanly, and then mysqld_safe exits instead of respawning it.
  stop_daemon mariadbd "$MYSQL_PIDFILE"
  stop_daemon mysqld_safe /nonexistent
}

cmd_status() {
  local ok=0
  if timeout 10 sinfo >/dev/null 2>&1; then
    timeout 10 sinfo -N -o '%N %P %T %C %m' || true
  else
    echo "devcluster: sinfo: no answer from slurmctld"
    ok=1
  fi
  if timeout 10 sacct -n -X -S now-1hours -o jobid >/dev/null 2>&1; then
    echo "devcluster: sacct: accounting works"
  else
    echo "devcluster: sacct: not working ($(timeout 10 sacct -n -X 2>&1 | head -n 1))"
    ok=1
  fi
  echo "devcluster: logs in $LOG_DIR"
  return "$ok"
}

usage() {
  sed -n '/^# Usage:/,/^#   up /p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
  case ${1:-} in
    install) install_packages ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart)
      cmd_stop
      cmd_start
      ;;
    up)
      install_packages
      cmd_start
      ;;
    -h | --help | help)
      usage
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
