#!/bin/sh
sh /etc/postgresql/roles/roles.sh
