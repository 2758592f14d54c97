#!/usr/bin/env bash
# Rebuild samples/lab/: a labelled capture of the netsift lab with its defaults (3 servers,
# 24 clients, 150 s) and seed 3 (nmap SYN scan, ping sweep and slow scan, hping3 SYN and UDP
# floods), cut to 128 bytes a frame (headers only; frame lengths on the wire are kept) and
# xz-compressed. Needs root and the lab's tools (netsift lab --help).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
netsift lab --out "$tmp" --seed 3
mkdir -p "$here/lab"
editcap -s 128 "$tmp/capture.pcap" "$tmp/cut.pcap"
xz -9e -c "$tmp/cut.pcap" > "$here/lab/capture.pcap.xz"
cp "$tmp/labels.json" "$here/lab/labels.json"
