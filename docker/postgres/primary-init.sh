#!/usr/bin/env bash
# Runs once, from /docker-entrypoint-initdb.d, when the primary's data directory is first created.
# The entrypoint runs it against a temporary server that listens on the Unix socket only; the
# pg_hba.conf line added here takes effect when the entrypoint restarts the server for real.
set -Eeuo pipefail

: "${REPLICATION_USER:?REPLICATION_USER must be set}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=repl_user="$REPLICATION_USER" --set=repl_password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"repl_user" WITH LOGIN REPLICATION PASSWORD :'repl_password';
CREATE DATABASE replikit;
-- The transfers demo's two ledger databases (two-phase commit), named after the service's database.
CREATE DATABASE replikit_ledger_a;
CREATE DATABASE replikit_ledger_b;
-- Physical slots keep the WAL each replica still needs, so a replica that falls behind or restarts
-- resumes streaming instead of needing a new base backup. Their names match the replicas' REPLICA_SLOT.
SELECT pg_create_physical_replication_slot('replica1');
SELECT pg_create_physical_replication_slot('replica2');
SQL

# "all" in the database column does not match replication connections: they need their own line.
echo "host replication ${REPLICATION_USER} all scram-sha-256" >>"$PGDATA/pg_hba.conf"
