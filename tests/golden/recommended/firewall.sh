#!/bin/sh
# Firewall for kbinfra stack "kb", rendered by kbinfra. Run as root.
#
# Docker publishes container ports through its own iptables chains, which ufw never sees:
# a `-p 6333:6333` is reachable from the world whatever ufw says. kbinfra therefore
# publishes internal services on 127.0.0.1 only, and this script adds a second wall in
# the DOCKER-USER chain (which Docker consults before its own rules) that drops traffic
# from outside to the internal ports even if someone publishes them on 0.0.0.0 later.
set -eu

EXTERNAL_IF="${EXTERNAL_IF:-$(ip route show default | awk '{print $5; exit}')}"
# The target's SSH port stays open (the stack file's ssh:// port), and so does the port of
# the SSH session running this script: a deny-by-default with the wrong port locks you out.
SSH_PORTS="22"
if [ -n "${SSH_CONNECTION:-}" ]; then
    SESSION_PORT="${SSH_CONNECTION##* }"
    [ "$SESSION_PORT" = "22" ] || SSH_PORTS="$SSH_PORTS $SESSION_PORT"
fi
PUBLIC_PORTS="$SSH_PORTS 80 443"
INTERNAL_PORTS="3000 5432 6333 6334 6379 8001 8002 9090 9093"

if command -v ufw >/dev/null 2>&1; then
    ufw default deny incoming
    ufw default allow outgoing
    for port in $PUBLIC_PORTS; do
        ufw allow "$port/tcp"
    done
    ufw --force enable
fi

# Idempotent: remove our previous rules, then add them again.
while iptables -D DOCKER-USER -i "$EXTERNAL_IF" -m comment --comment "kbinfra-kb" -j DROP -p tcp -m multiport --dports "$(echo $INTERNAL_PORTS | tr ' ' ',')" 2>/dev/null; do :; done
if [ -n "$INTERNAL_PORTS" ]; then
    iptables -N DOCKER-USER 2>/dev/null || true
    iptables -I DOCKER-USER -i "$EXTERNAL_IF" -p tcp -m multiport \
        --dports "$(echo $INTERNAL_PORTS | tr ' ' ',')" \
        -m comment --comment "kbinfra-kb" -j DROP
fi
echo "firewall: public ports $PUBLIC_PORTS; internal ports ($INTERNAL_PORTS) dropped on $EXTERNAL_IF"
