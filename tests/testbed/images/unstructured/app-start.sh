#!/bin/sh
# Where the upstream image's start script sits; here it starts the stand-in on port 8000.
exec python3 /opt/kbinfra-testbed/unstructured_standin.py "$@"
