#!/bin/sh
# tcpdump -z hook: run with the path of each capture file tcpdump has just closed.
#
# Moves CAPTURE_INCOMING/NAME to CAPTURE_SPOOL/NAME. Both lie on the same volume, so the
# move is one rename: readers of the spool (netsift ingest, netsift stream --spool,
# Spark's file source) see a file only once it is complete, never half written.
set -eu

file=${1:?usage: netsift-spool-publish CAPTURE_FILE}
spool=${CAPTURE_SPOOL:?CAPTURE_SPOOL is not set}
mkdir -p "$spool"
mv -f -- "$file" "$spool/$(basename -- "$file")"
