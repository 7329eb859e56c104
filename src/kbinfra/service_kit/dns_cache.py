"""How long the stack's own clients keep an answer of Docker's DNS.

nginx resolves the services it proxies per request, through Docker's embedded DNS, and keeps
each answer this long (its ``resolver ... valid=``). On a Swarm, a task being replaced is
taken out of DNS two seconds before it is told to stop (moby's executor), so a task that
answers for this long after its stop signal is never sent a request it cannot answer: the
embedding service drains for it (``drain_s`` in its config.json).
"""

#: Seconds nginx keeps a name's addresses (``resolver ... valid=``).
DNS_CACHE_S = 10
