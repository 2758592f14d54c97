#!/bin/sh
# Capture agent: tcpdump on one interface, a new file every CAPTURE_ROTATE_SECONDS
# (tcpdump rotates on the first packet after that), each published into the spool
# directory when closed (netsift-spool-publish).
#
# Layout on the shared volume, one directory per node so that agents never collide:
#   $CAPTURE_ROOT/incoming/$NODE_NAME/   files tcpdump is writing
#   $CAPTURE_ROOT/spool/$NODE_NAME/      finished files, for netsift to read
# Files left in incoming/ by an agent that was killed are published at start-up; on
# SIGTERM the agent stops tcpdump and publishes the file it was writing.
set -eu

: "${CAPTURE_IFACE:?CAPTURE_IFACE is not set (the interface to capture, e.g. eth0)}"
: "${NODE_NAME:?NODE_NAME is not set}"
root=${CAPTURE_ROOT:-/captures}
incoming="$root/incoming/$NODE_NAME"
CAPTURE_SPOOL="$root/spool/$NODE_NAME"
export CAPTURE_SPOOL
mkdir -p "$incoming" "$CAPTURE_SPOOL"

publish_leftovers() {
  for file in "$incoming"/*.pcap; do
    if [ -f "$file" ]; then netsift-spool-publish "$file"; fi
  done
}

publish_leftovers

# File names are UTC start times (tcpdump formats -w with strftime in the local zone).
TZ=UTC
export TZ
# shellcheck disable=SC2086  # CAPTURE_FILTER is a BPF expression of several words.
tcpdump -i "$CAPTURE_IFACE" -n -s "${CAPTURE_SNAPLEN:-262144}" \
  -B "${CAPTURE_BUFFER_KIB:-16384}" -G "${CAPTURE_ROTATE_SECONDS:-60}" \
  -w "$incoming/%Y%m%dT%H%M%SZ.pcap" -z netsift-spool-publish ${CAPTURE_FILTER:-} &
tcpdump_pid=$!

# shellcheck disable=SC2329  # invoked by the trap below
stop() {
  kill -TERM "$tcpdump_pid" 2>/dev/null || true
}
trap stop TERM INT

# wait returns early when a trapped signal arrives: wait again for tcpdump to finish.
status=0
wait "$tcpdump_pid" || status=$?
if kill -0 "$tcpdump_pid" 2>/dev/null; then
  status=0
  wait "$tcpdump_pid" || status=$?
fi
publish_leftovers
# 143 (128 + SIGTERM) after our own stop request is a clean shutdown.
if [ "$status" -eq 143 ]; then status=0; fi
exit "$status"
