#!/bin/sh
# Packages installed while building an image must not start their services.
exit 101
