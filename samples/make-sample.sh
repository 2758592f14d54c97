#!/usr/bin/env bash
# Rebuild samples/lan.pcap.gz: a small LAN in network namespaces on a bridge, captured with
# tcpdump. Hosts: server 10.77.0.1 (HTTP :8080, UDP :53 closed), clients .11 .12 (web, dns,
# ping), scanner .66 (nmap SYN scan of the server's first 1000 ports, ping sweep). Needs root.
set -euo pipefail
out=${1:-$(dirname "$0")/lan.pcap.gz}
tag=nss$$
hosts=(srv:10.77.0.1 c1:10.77.0.11 c2:10.77.0.12 scan:10.77.0.66)
cleanup() {
  [ -n "${tdpid:-}" ] && kill "$tdpid" 2>/dev/null || true
  [ -n "${httppid:-}" ] && kill "$httppid" 2>/dev/null || true
  for h in "${hosts[@]}"; do ip netns del "$tag-${h%%:*}" 2>/dev/null || true; done
  ip link del "$tag-br" 2>/dev/null || true
}
trap cleanup EXIT
ip link add "$tag-br" type bridge && ip link set "$tag-br" up
for h in "${hosts[@]}"; do
  name=${h%%:*}; addr=${h#*:}
  ip netns add "$tag-$name"
  ip link add "$tag-$name" type veth peer name eth0 netns "$tag-$name"
  ip link set "$tag-$name" master "$tag-br" up
  ip -n "$tag-$name" addr add "$addr/24" dev eth0
  ip -n "$tag-$name" link set eth0 up
  ip -n "$tag-$name" link set lo up
done
tmp=$(mktemp -d)
tcpdump -i "$tag-br" -w "$tmp/lan.pcap" -U >/dev/null 2>&1 & tdpid=$!
sleep 1
ip netns exec "$tag-srv" python3 -m http.server 8080 --bind 10.77.0.1 -d "$tmp" >/dev/null 2>&1 & httppid=$!
sleep 1
for round in 1 2 3 4 5 6; do
  for c in c1 c2; do
    ip netns exec "$tag-$c" curl -s -o /dev/null --max-time 2 http://10.77.0.1:8080/ || true
    ip netns exec "$tag-$c" dig @10.77.0.1 +tries=1 +time=1 "host$round.example" >/dev/null || true
    ip netns exec "$tag-$c" ping -c 2 -i 0.2 -W 1 10.77.0.1 >/dev/null || true
  done
  [ "$round" = 3 ] && ip netns exec "$tag-scan" timeout 60 nmap -n -sS -T4 -p 1-1000 10.77.0.1 >/dev/null
  [ "$round" = 4 ] && ip netns exec "$tag-scan" timeout 60 nmap -n -sn 10.77.0.0/28 >/dev/null
  sleep 1
done
sleep 1
kill "$tdpid"; wait "$tdpid" 2>/dev/null || true; tdpid=
gzip -9 -c "$tmp/lan.pcap" > "$out"
rm -rf "$tmp"
echo "wrote $out"
