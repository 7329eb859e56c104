#!/bin/sh
# The official redis image's entrypoint contract for the kbinfra test bed.
set -eu

# `docker run redis -- --foo` and `docker run redis /path/redis.conf` run redis-server.
case "${1:-}" in
  -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec gosu redis "$0" "$@"
fi

if [ "${1:-}" = redis-server ]; then
  # The official image compiles redis with protected mode off by default; Debian's binary has it
  # on. Match upstream unless the command line or the config file decides.
  decided=no
  for arg in "$@"; do
    case "$arg" in
      --protected-mode) decided=yes ;;
      *.conf) [ -f "$arg" ] && grep -Eqi '^[[:space:]]*protected-mode[[:space:]]' "$arg" && decided=yes ;;
    esac
  done
  if [ "$decided" = no ]; then
    first="$1"; shift
    case "${1:-}" in
      *.conf) conf="$1"; shift; set -- "$first" "$conf" --protected-mode no "$@" ;;
      *) set -- "$first" --protected-mode no "$@" ;;
    esac
  fi
  um="$(umask)"
  [ "$um" = 0022 ] && umask 0077
fi

exec "$@"
