#!/bin/sh
# The official nginx image's entrypoint contract: run /docker-entrypoint.d/*.sh, then the command.
set -eu
if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
  for f in /docker-entrypoint.d/*; do
    [ -e "$f" ] || continue
    case "$f" in
      *.sh) if [ -x "$f" ]; then echo "$0: launching $f"; "$f"; else echo "$0: ignoring $f, not executable"; fi ;;
      *) echo "$0: ignoring $f" ;;
    esac
  done
  echo "$0: configuration complete; ready for start up"
fi
exec "$@"
