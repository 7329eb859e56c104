#!/bin/sh
# Like the upstream image's entrypoint: the container's arguments go to ./qdrant.
exec ./qdrant "$@"
