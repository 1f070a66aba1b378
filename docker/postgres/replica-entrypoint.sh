#!/usr/bin/env bash
# Entrypoint of a streaming replica. On first start (no cluster in $PGDATA) it clones the primary
# with pg_basebackup, which writes standby.signal and primary_conninfo (-R) and streams the WAL
# written during the copy (-X stream) through this replica's physical slot (-S). It then hands over
# to the image's own entrypoint, which finds an existing cluster, skips initdb and starts postgres
# with the arguments given as the container's command.
set -Eeuo pipefail

: "${PGDATA:?PGDATA must be set}"
: "${PRIMARY_HOST:=primary}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICA_SLOT:?REPLICA_SLOT must be set (the physical slot created on the primary)}"
: "${REPLICATION_USER:?REPLICATION_USER must be set}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"

# The image's entrypoint starts as root and drops to postgres; pg_basebackup must write the files
# as postgres too, or the server refuses the data directory.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    gosu postgres "$@"
  else
    "$@"
  fi
}

# The WAL receiver reads the password from this file on every (re)connection: -R records its path in
# primary_conninfo. It lives in the volume beside the data directory and is rewritten on each start.
export PGPASSFILE="${PGPASSFILE:-/var/lib/postgresql/replication.pgpass}"
password="${REPLICATION_PASSWORD//\\/\\\\}" # a password file escapes \ and : with a backslash
password="${password//:/\\:}"
printf '%s:%s:replication:%s:%s\n' "$PRIMARY_HOST" "$PRIMARY_PORT" "$REPLICATION_USER" "$password" |
  as_postgres sh -c 'umask 077 && cat >"$1"' sh "$PGPASSFILE"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "replica: waiting for ${PRIMARY_HOST}:${PRIMARY_PORT}"
  until pg_isready --quiet --host "$PRIMARY_HOST" --port "$PRIMARY_PORT" --username "$REPLICATION_USER"; do
    sleep 1
  done

  # Clone into a scratch directory and rename it at the end, so a backup interrupted half-way
  # (container stopped, primary restarted) is started again instead of mistaken for a cluster.
  staging="${PGDATA%/}.basebackup"
  as_postgres rm -rf "$staging"
  as_postgres mkdir -p "$(dirname "$PGDATA")"
  echo "replica: cloning ${PRIMARY_HOST} through slot ${REPLICA_SLOT}"
  as_postgres env PGPASSFILE="$PGPASSFILE" pg_basebackup \
    --host "$PRIMARY_HOST" --port "$PRIMARY_PORT" --username "$REPLICATION_USER" --no-password \
    --pgdata "$staging" --write-recovery-conf --wal-method stream --slot "$REPLICA_SLOT" \
    --checkpoint fast
  as_postgres rm -rf "$PGDATA"
  as_postgres mv "$staging" "$PGDATA"
  as_postgres chmod 0700 "$PGDATA"
fi

exec docker-entrypoint.sh "$@"
