#!/usr/bin/env bash
# Spark GPU discovery script (spark.{driver,executor}.resource.gpu.discoveryScript).
#
# Prints the GPUs this container may use as one JSON object, the contract Spark's
# ResourceInformation parser expects:
#   {"name":"gpu","addresses":["0","1"]}
# The addresses are nvidia-smi's indexes; inside a pod they cover only the GPUs the
# NVIDIA device plugin gave it. Without nvidia-smi (a CPU-only node) it prints an empty
# list; the example script in Spark's distribution prints one empty address there
# ("addresses":[""]). If nvidia-smi exists but fails (driver not loaded), this exits
# non-zero with nvidia-smi's message, so an executor that asked for a GPU fails to start
# instead of running without one.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
  printf '{"name":"gpu","addresses":[]}\n'
  exit 0
fi

indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader)
addresses=()
while IFS= read -r index; do
  index=${index//[[:space:]]/}
  [[ -z $index ]] && continue
  if [[ ! $index =~ ^[0-9]+$ ]]; then
    printf 'getGpusResources.sh: unexpected nvidia-smi output: %s\n' "$index" >&2
    exit 1
  fi
  addresses+=("\"$index\"")
done <<<"$indexes"

joined=$(IFS=,; printf '%s' "${addresses[*]}")
printf '{"name":"gpu","addresses":[%s]}\n' "$joined"
