#!/usr/bin/env bash
# The team stack on this machine, for trying genpipe's scale-out set-up (and for its tests):
#   PostgreSQL (MLflow's backend store), an S3 endpoint (moto, standing in for S3 or MinIO)
#   and `mlflow server` on PostgreSQL with its artifacts on S3, served through the server.
#
#   scripts/team_stack.sh up | down | status [DIR]
#
# Everything binds 127.0.0.1 and lives in DIR (default .team-stack/ in the repo, or
# $TEAM_STACK_DIR): data, logs, pid files, and stack.env (the ports in use). `up` starts what
# is not running and prints the settings for MLflow and DVC; `down` stops all three.
# A real team runs its own PostgreSQL, S3 bucket and MLflow server and sets the same lines
# with its own hosts; nothing else changes.
#
# Settings (environment; `up` records the ports and the bucket in DIR/stack.env when it starts
# from nothing running, and later calls read them back):
#   TEAM_STACK_PG_PORT (5433)  TEAM_STACK_S3_PORT (9000)  TEAM_STACK_MLFLOW_PORT (5050: `mlflow ui` keeps 5000)
#   TEAM_STACK_BUCKET (genpipe)  TEAM_STACK_MLFLOW_WORKERS (2)  TEAM_STACK_TIMEOUT (60 s a service)
#   TEAM_STACK_WEBHOOK_CACHE_TTL (5 s: how soon the server posts to a webhook just registered)
# The server posts MLflow webhooks (`genpipe serve` registers one) to http addresses on this
# machine: everything here is loopback. Its webhook secrets are encrypted with a key kept in
# DIR/webhook.key (private), so its workers and its restarts read them.
# Needs: Debian's postgresql package, and the project's environment first on PATH with the
# team extra (pip install -e '.[team]': moto[server], psycopg2-binary, dvc-s3).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-}
dir=${2:-${TEAM_STACK_DIR:-$repo/.team-stack}}
case $command in up|down|status) ;; *)
    echo "usage: scripts/team_stack.sh up|down|status [DIR]" >&2; exit 2 ;;
esac
mkdir -p "$dir/logs" "$dir/run"
dir=$(cd "$dir" && pwd)

# moto's test credentials: moto accepts any key; these are its documented dummy values, not
# secrets. A real bucket's keys go in `dvc remote modify --local` or the AWS environment.
MOTO_KEY_ID=testing
MOTO_SECRET=testing

# what `up` recorded wins over the defaults; the environment wins over both
saved=()
[ -f "$dir/stack.env" ] && mapfile -t saved < "$dir/stack.env"
for line in "${saved[@]}"; do
    key=${line%%=*}
    [ -n "${!key:-}" ] || export "$line"
done
pg_port=${TEAM_STACK_PG_PORT:-5433}
s3_port=${TEAM_STACK_S3_PORT:-9000}
mlflow_port=${TEAM_STACK_MLFLOW_PORT:-5050}
bucket=${TEAM_STACK_BUCKET:-genpipe}
workers=${TEAM_STACK_MLFLOW_WORKERS:-2}
timeout=${TEAM_STACK_TIMEOUT:-60}
s3_url=http://127.0.0.1:$s3_port
mlflow_url=http://127.0.0.1:$mlflow_port

fail() { echo "team-stack: $*" >&2; exit 1; }

last_line() {  # of a log: its last error line, else its last line
    local line
    line=$(grep -E 'FATAL|ERROR|Error' "$1" 2>/dev/null | tail -n 1 || true)
    [ -n "$line" ] || line=$(tail -n 1 "$1" 2>/dev/null || true)
    echo "${line:-(empty)}"
}

# the newest Debian PostgreSQL (/usr/lib/postgresql/<version>/bin)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
# pg_ctl and initdb refuse root: as root, PostgreSQL runs as the postgres user
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# a service is its process group (each starts as a group leader); exited processes that no
# one has reaped yet (zombies) do not count
running() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {n++} END {exit !n}'; }
alive() { [ -f "$1" ] && running "$(head -n 1 "$1")"; }

answers() {  # HTTP URL answers at all (any status)
    python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).close()
except urllib.error.HTTPError:
    pass
EOF
}

postgres_answers() { pg_isready -q -h 127.0.0.1 -p "$pg_port" 2>/dev/null || "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; }
s3_answers() { answers "$s3_url/"; }
mlflow_answers() { answers "$mlflow_url/health"; }

port_free() {  # PORT: nothing listens on 127.0.0.1:PORT (else a check could pass on another's server)
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
with socket.socket() as s:  # as the servers bind: a closed connection's TIME_WAIT is no user
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
EOF
}
need_port() {  # NAME PORT VARIABLE
    port_free "$2" || fail "$1: port $2 on 127.0.0.1 is in use by another process; set $3 to a free one"
}

wait_for() {  # NAME LOG PIDFILE CHECK: until CHECK passes, for $timeout seconds at most
    local name=$1 log=$2 pidfile=$3 check=$4 waited=0
    until alive "$pidfile" && $check; do
        if ! alive "$pidfile" || [ "$waited" -ge $((timeout * 2)) ]; then
            local why="did not answer within $timeout s"
            alive "$pidfile" || why="exited"
            fail "$name $why; see $log: $(last_line "$log")"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

start_postgres() {
    local data=$dir/postgres log=$dir/logs/postgres.log
    [ -n "$pg_bin" ] || fail "PostgreSQL not found under /usr/lib/postgresql (apt-get install postgresql)"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    as_pg test -w "$data" || fail "postgres (the user PostgreSQL runs as) cannot write $data; choose a TEAM_STACK_DIR it can reach"
    if [ ! -f "$data/PG_VERSION" ]; then
        # peer login on the unix socket (to create the role), passwords over TCP
        as_pg "$pg_bin/initdb" -D "$data" -A scram-sha-256 --auth-local=peer -E UTF8 \
            >"$dir/logs/initdb.log" 2>&1 || fail "initdb failed; see $dir/logs/initdb.log"
    fi
    : >"$log"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$log"
    as_pg "$pg_bin/pg_ctl" start -D "$data" -l "$log" -w -t "$timeout" \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $data" >/dev/null 2>&1 ||
        fail "PostgreSQL did not start; see $log: $(last_line "$log")"
    head -n 1 "$data/postmaster.pid" >"$dir/run/postgres.pid"
    wait_for PostgreSQL "$log" "$dir/run/postgres.pid" postgres_answers
    if [ ! -f "$dir/pgpass" ]; then  # the mlflow role and database, once
        local password
        password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
        as_pg "$pg_bin/psql" -q -h "$data" -p "$pg_port" -d postgres -v ON_ERROR_STOP=1 \
            >>"$log" 2>&1 <<EOF || fail "could not create MLflow's database; see $log"
CREATE ROLE mlflow LOGIN PASSWORD '$password';
CREATE DATABASE mlflow OWNER mlflow;
EOF
        # libpq reads the password from here: it is on no command line and in no URI
        (umask 077 && echo "127.0.0.1:*:mlflow:mlflow:$password" >"$dir/pgpass")
    fi
}

start_s3() {
    local log=$dir/logs/s3.log
    command -v moto_server >/dev/null || fail "moto_server not found on PATH (pip install -e '.[team]')"
    need_port "S3 endpoint (moto)" "$s3_port" TEAM_STACK_S3_PORT
    setsid moto_server -H 127.0.0.1 -p "$s3_port" </dev/null >"$log" 2>&1 &
    echo $! >"$dir/run/s3.pid"
    wait_for "S3 endpoint (moto)" "$log" "$dir/run/s3.pid" s3_answers
    # moto keeps its buckets in memory: create the bucket at every start
    AWS_ACCESS_KEY_ID=$MOTO_KEY_ID AWS_SECRET_ACCESS_KEY=$MOTO_SECRET python3 - "$s3_url" "$bucket" \
        <<'EOF' >>"$log" 2>&1 || fail "could not create bucket $bucket; see $log"
import sys
import boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.create_bucket(Bucket=sys.argv[2])
EOF
}

webhook_key() {  # DIR/webhook.key: a Fernet key, made once, readable by this user alone
    [ -s "$dir/webhook.key" ] && return
    (umask 077 && python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' \
        >"$dir/webhook.key")
}

start_mlflow() {
    local log=$dir/logs/mlflow.log
    command -v mlflow >/dev/null || fail "mlflow not found on PATH (activate the project's environment)"
    need_port "mlflow server" "$mlflow_port" TEAM_STACK_MLFLOW_PORT
    webhook_key
    # the server alone talks to S3; clients up- and download artifacts through it
    PGPASSFILE=$dir/pgpass MLFLOW_S3_ENDPOINT_URL=$s3_url AWS_DEFAULT_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=$MOTO_KEY_ID AWS_SECRET_ACCESS_KEY=$MOTO_SECRET \
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=$(cat "$dir/webhook.key") \
    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https \
    MLFLOW_WEBHOOK_CACHE_TTL=${TEAM_STACK_WEBHOOK_CACHE_TTL:-5} \
        setsid mlflow server --host 127.0.0.1 --port "$mlflow_port" --workers "$workers" \
        --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$pg_port/mlflow" \
        --artifacts-destination "s3://$bucket/mlartifacts" </dev/null >"$log" 2>&1 &
    echo $! >"$dir/run/mlflow.pid"
    wait_for "mlflow server" "$log" "$dir/run/mlflow.pid" mlflow_answers
}

stop() {  # NAME: its process group, then wait for it to go (10 s, then SIGKILL)
    local pidfile=$dir/run/$1.pid
    # a PostgreSQL whose start timed out has its own pid file only
    if [ "$1" = postgres ] && [ ! -f "$pidfile" ] && [ -f "$dir/postgres/postmaster.pid" ]; then
        head -n 1 "$dir/postgres/postmaster.pid" >"$pidfile"
    fi
    if alive "$pidfile"; then
        local pid
        pid=$(head -n 1 "$pidfile")
        if [ "$1" = postgres ]; then  # a failed stop falls through to the signals below
            as_pg "$pg_bin/pg_ctl" stop -D "$dir/postgres" -m fast -w >/dev/null 2>&1 ||
                kill -TERM -- "-$pid" 2>/dev/null || true
        else
            kill -TERM -- "-$pid" 2>/dev/null || true
        fi
        for _ in $(seq 50); do running "$pid" || break; sleep 0.2; done
        if running "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        echo "team-stack: $1 stopped"
    fi
    rm -f "$pidfile"
}

settings() {
    cat <<EOF
# MLflow: runs, the registry and artifacts through the server
export MLFLOW_TRACKING_URI=$mlflow_url
# DVC: the remote on the S3 endpoint (moto's test credentials, in .dvc/config.local only)
dvc remote add -d team s3://$bucket/dvc
dvc remote modify team endpointurl $s3_url
dvc remote modify --local team access_key_id $MOTO_KEY_ID
dvc remote modify --local team secret_access_key $MOTO_SECRET
EOF
}

case $command in
up)
    # recorded only from a clean start: a running service keeps the ports it was started on
    if ! alive "$dir/run/postgres.pid" && ! alive "$dir/run/s3.pid" && ! alive "$dir/run/mlflow.pid"; then
        printf '%s\n' "TEAM_STACK_PG_PORT=$pg_port" "TEAM_STACK_S3_PORT=$s3_port" \
            "TEAM_STACK_MLFLOW_PORT=$mlflow_port" "TEAM_STACK_BUCKET=$bucket" >"$dir/stack.env"
    fi
    started=0
    if alive "$dir/run/postgres.pid"; then :; else start_postgres; started=1; fi
    if alive "$dir/run/s3.pid"; then :; else start_s3; started=1; fi
    if alive "$dir/run/mlflow.pid"; then :; else start_mlflow; started=1; fi
    if [ $started -eq 0 ]; then
        echo "team-stack: already up in $dir"
    else
        echo "team-stack: up in $dir (logs in $dir/logs)"
    fi
    settings
    ;;
down)
    stop mlflow
    stop s3
    stop postgres
    echo "team-stack: down"
    ;;
status)
    state=0
    for service in postgres s3 mlflow; do
        check=${service}_answers
        if alive "$dir/run/$service.pid" && $check; then
            echo "$service: up"
        else
            echo "$service: down"
            state=3
        fi
    done
    [ $state -eq 0 ] && settings
    exit $state
    ;;
esac
