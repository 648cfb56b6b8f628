#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying `genpipe sweep --on slurm` (and for
# its tests): munged with a key of its own, slurmctld and slurmd, one partition of this
# machine's cores and memory.
#
#   scripts/slurm_cluster.sh up | down | status [DIR]
#
# Everything lives in DIR (default .slurm-cluster/ in the repo, or $SLURM_CLUSTER_DIR):
# slurm.conf, the munge key and socket, the daemons' state, logs and pid files. Slurm's
# commands find this cluster through SLURM_CONF, which `up` prints. Run as root (a
# container or a VM of your own): slurmd starts each job as its user.
#
# Settings (environment; `up` records them in DIR/cluster.env, later calls read them back):
#   SLURM_CLUSTER_CTLD_PORT (6817)  SLURM_CLUSTER_D_PORT (6818)  SLURM_CLUSTER_TIMEOUT (30 s)
#   SLURM_CLUSTER_CPUS (this machine's cores)  SLURM_CLUSTER_MEMORY_MB (90% of its memory)
# Needs Debian's slurm-wlm and munge packages.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-}
dir=${2:-${SLURM_CLUSTER_DIR:-$repo/.slurm-cluster}}
case $command in up|down|status) ;; *)
    echo "usage: scripts/slurm_cluster.sh up|down|status [DIR]" >&2; exit 2 ;;
esac
mkdir -p "$dir/logs" "$dir/run" "$dir/state" "$dir/spool"
dir=$(cd "$dir" && pwd)

saved=()
[ -f "$dir/cluster.env" ] && mapfile -t saved < "$dir/cluster.env"
for line in "${saved[@]}"; do
    key=${line%%=*}
    case $key in SLURM_CLUSTER_*) ;; *) continue ;; esac  # nothing else, as root
    [ -n "${!key:-}" ] || export "$line"
done
ctld_port=${SLURM_CLUSTER_CTLD_PORT:-6817}
d_port=${SLURM_CLUSTER_D_PORT:-6818}
cpus=${SLURM_CLUSTER_CPUS:-$(nproc)}
memory=${SLURM_CLUSTER_MEMORY_MB:-$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
timeout=${SLURM_CLUSTER_TIMEOUT:-30}
node=$(hostname -s)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

fail() { echo "slurm-cluster: $*" >&2; exit 1; }

last_line() {  # of a log: its last error line, else its last line
    local line
    line=$(grep -E 'error|fatal|Error' "$1" 2>/dev/null | tail -n 1 || true)
    [ -n "$line" ] || line=$(tail -n 1 "$1" 2>/dev/null || true)
    echo "${line:-(empty)}"
}

alive() { [ -f "$1" ] && kill -0 "$(head -n 1 "$1")" 2>/dev/null; }

status_of() { if alive "$dir/run/$1.pid"; then echo "$1: up"; else echo "$1: down"; return 1; fi; }

stop() {  # $1: the service; SIGTERM, then SIGKILL after 10 s
    local pidfile=$dir/run/$1.pid pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(head -n 1 "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

write_config() {
    printf '%s\n' "SLURM_CLUSTER_CTLD_PORT=$ctld_port" "SLURM_CLUSTER_D_PORT=$d_port" \
        "SLURM_CLUSTER_CPUS=$cpus" "SLURM_CLUSTER_MEMORY_MB=$memory" > "$dir/cluster.env"
    [ -f "$dir/munge.key" ] || (
        umask 077  # the key is never readable by others, not even for a moment
        mungekey --create --keyfile="$dir/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    )
    chmod 600 "$dir/munge.key"
    cat > "$conf" <<EOF
# a one-node cluster for genpipe's tests (scripts/slurm_cluster.sh)
ClusterName=genpipe
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/logs/slurmctld.log
SlurmdLogFile=$dir/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=10
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

wait_for() {  # $1: what, $2: log, then the command that must succeed
    local what=$1 log=$2
    shift 2
    for _ in $(seq $((timeout * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$what did not start; see $log: $(last_line "$log")"
}

node_ready() { sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'; }

up() {
    [ "$(id -u)" -eq 0 ] || fail "expected root (slurmd starts jobs as their users); found $(id -un)"
    command -v slurmctld >/dev/null && command -v munged >/dev/null ||
        fail "expected slurmctld, slurmd and munged (Debian's slurm-wlm and munge); found them missing"
    if alive "$dir/run/munged.pid" && alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd.pid"; then
        echo "slurm-cluster: already up in $dir"
    else
        write_config
        alive "$dir/run/munged.pid" || {
            munged --force --key-file="$dir/munge.key" --socket="$dir/run/munge.socket" \
                --pid-file="$dir/run/munged.pid" --log-file="$dir/logs/munged.log" \
                --seed-file="$dir/run/munged.seed" 2>>"$dir/logs/munged.log" ||
                fail "munged did not start; see $dir/logs/munged.log: $(last_line "$dir/logs/munged.log")"
        }
        alive "$dir/run/slurmctld.pid" || {
            slurmctld -f "$conf" -i 2>>"$dir/logs/slurmctld.log" ||
                fail "slurmctld did not start; see $dir/logs/slurmctld.log: $(last_line "$dir/logs/slurmctld.log")"
            wait_for slurmctld "$dir/logs/slurmctld.log" scontrol ping
        }
        alive "$dir/run/slurmd.pid" || {
            slurmd -f "$conf" -N "$node" 2>>"$dir/logs/slurmd.log" ||
                fail "slurmd did not start; see $dir/logs/slurmd.log: $(last_line "$dir/logs/slurmd.log")"
        }
        wait_for slurmd "$dir/logs/slurmd.log" node_ready
        echo "slurm-cluster: up in $dir (logs in $dir/logs): $node, $cpus CPUs, ${memory} MB"
    fi
    echo "export SLURM_CONF=$conf"
}

down() {
    # jobs first, so that none is left running under a stopped slurmd
    if alive "$dir/run/slurmctld.pid"; then scancel --full --quiet --user="$(id -un)" 2>/dev/null || true; fi
    stop slurmd
    stop slurmctld
    stop munged
    echo "slurm-cluster: down ($dir)"
}

case $command in
    up) up ;;
    down) down ;;
    status)
        code=0
        for service in munged slurmctld slurmd; do status_of "$service" || code=3; done
        exit $code ;;
esac
