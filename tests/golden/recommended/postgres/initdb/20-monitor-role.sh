#!/bin/sh
# Runs once, when the data directory is initialised: a least-privilege role for the
# postgres exporter. The password comes from the environment, never from this file.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v monitor_password="$KBINFRA_MONITOR_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE kbinfra_monitor LOGIN PASSWORD %L', :'monitor_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbinfra_monitor')\gexec
GRANT pg_monitor TO kbinfra_monitor;
SQL
