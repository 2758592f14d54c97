#!/usr/bin/env bash
# Rebuild samples/lab/: a labelled capture of the netsift lab (24 clients, 150 s, seed 2;
# nmap SYN scan, ping sweep and slow scan, hping3 SYN and UDP floods), cut to 128 bytes a
# frame (headers only; frame lengths on the wire are kept) and xz-compressed. Needs root
# and the lab's tools (netsift lab --help).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
netsift lab --out "$tmp" --seconds 150 --clients 24 --seed 2
mkdir -p "$here/lab"
editcap -s 128 "$tmp/capture.pcap" "$tmp/cut.pcap"
xz -9e -c "$tmp/cut.pcap" > "$here/lab/capture.pcap.xz"
cp "$tmp/labels.json" "$here/lab/labels.json"
