#!/bin/sh
# Rendered by kbinfra: each consumer's owner role (NOLOGIN, not a superuser, no
# CREATEDB, no CREATEROLE) and its two alternating login roles, and the superuser's
# password (docs/operations.md, Secrets rotation). Idempotent: it runs when the data
# directory is initialised, after every start of the container and whenever it or a
# superuser password file changes.
set -eu
PGPASSWORD="$(cat /etc/postgresql/roles/superuser)"
export PGPASSWORD
if ! psql -X -w -q -A -t -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "SELECT 1" >/dev/null 2>&1; then
  other="$(cat /etc/postgresql/roles/superuser-other)"
  if [ -z "$other" ]; then
    echo "postgres_password (secrets.yaml) does not open the server as $POSTGRES_USER: it keeps the password it was initialized or last rotated with; put that value back in secrets.yaml, and change it only with: kbinfra secrets rotate postgres_password" >&2
    exit 1
  fi
  PGPASSWORD="$other"
fi
psql -v ON_ERROR_STOP=1 -X -q -w --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
SELECT 'CREATE ROLE kbinfra_monitor NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbinfra_monitor')\gexec
ALTER ROLE kbinfra_monitor WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT pg_monitor TO kbinfra_monitor;
SELECT 'CREATE ROLE kbinfra_monitor_a NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbinfra_monitor_a')\gexec
ALTER ROLE kbinfra_monitor_a WITH INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT kbinfra_monitor TO kbinfra_monitor_a;
ALTER ROLE kbinfra_monitor_a SET role = 'kbinfra_monitor';
ALTER ROLE kbinfra_monitor_a WITH NOLOGIN PASSWORD NULL;
SELECT 'CREATE ROLE kbinfra_monitor_b NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbinfra_monitor_b')\gexec
ALTER ROLE kbinfra_monitor_b WITH INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT kbinfra_monitor TO kbinfra_monitor_b;
ALTER ROLE kbinfra_monitor_b SET role = 'kbinfra_monitor';
ALTER ROLE kbinfra_monitor_b WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:Mzxwv98zssb5h+EDQH3+Vw==$SO62C2d7N8vsYwyERKWIqSr1hKI8lk2y197HCHsn4L8=:uZRk2HFfXjinu1+zmxbOk+IpFs7MTt+PD5vEgo4X8/U=';
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename IN ('kbinfra_monitor_a');
ALTER ROLE kb WITH PASSWORD 'SCRAM-SHA-256$4096:HvKlwLatogtQoSNhCftR4Q==$9dLCzJlEfHDmSACYr7HgZMngbEzI1Qp+JftldTRQplk=:4epYxg03OKTrp1QgaGM5V6VmQL9Plh/KrmLriERBPes=';
SQL
