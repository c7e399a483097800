#!/usr/bin/env bash
# postgres.sh -- a throwaway PostgreSQL on 127.0.0.1 for the record store's PostgreSQL backend
# (issue #18): its unit tests, the two-daemon test and the bench. Run as root (as CI does);
# the server runs as the `postgres` user in a temporary directory that user owns
# (recipe: shared/notes/postgres.md; about 0.7 s to start).
#
#   postgres.sh start [DIR]  install postgresql if missing, initdb a fresh cluster in DIR, start it,
#                            print the DSN (also written to DIR/dsn)
#   postgres.sh stop  [DIR]  stop the server started from DIR and remove DIR
#   postgres.sh pause [DIR]  stop the server, keeping its data (an outage, for tests)
#   postgres.sh resume [DIR] start the server of DIR again on the same port
#
# DIR defaults to $CAREBRIDGE_PG_DIR, else /tmp/carebridge-pg. Port: $PG_PORT (default 15432).
# Trust authentication: for this throwaway cluster only (the daemon's own configuration takes
# its connection string, password included, from a file or the environment).
set -euo pipefail

cmd=${1:-}
dir=${2:-${CAREBRIDGE_PG_DIR:-/tmp/carebridge-pg}}
port=${PG_PORT:-15432}

bindir() {
    local b
    b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [ -n "$b" ] && echo "$b"
}

case "$cmd" in
start)
    if ! bindir >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    bin=$(bindir)
    if [ -f "$dir/data/postmaster.pid" ]; then
        su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres: "$dir"
    su postgres -s /bin/sh -c "'$bin/initdb' -D '$dir/data' -A trust -U postgres -E UTF8 --no-sync" >/dev/null
    su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w \
        -o \"-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200\" start" >/dev/null
    dsn="postgresql://postgres@127.0.0.1:$port/postgres"
    echo "$dsn" >"$dir/dsn"
    echo "$dsn"
    ;;
pause)
    su postgres -s /bin/sh -c "'$(bindir)/pg_ctl' -D '$dir/data' -m immediate -w stop" >/dev/null
    ;;
resume)
    su postgres -s /bin/sh -c "'$(bindir)/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w \
        -o \"-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200\" start" >/dev/null
    ;;
stop)
    if [ -d "$dir/data" ] && bin=$(bindir); then
        su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop|pause|resume [DIR]" >&2
    exit 2
    ;;
esac
