#!/usr/bin/env bash
# Creates a Cloud TPU VM, or with --queued a queued resource: a request that waits in line for
# capacity and then creates the VM (node id = --name).
#
# usage: tpu/create.sh --accelerator-type=TYPE [--version=RUNTIME] [--spot | --preemptible]
#                      [--queued] [--project=P --zone=Z --name=N] [--dry-run]
#
#   --accelerator-type=TYPE  (or TPU_ACCELERATOR_TYPE) e.g. v4-32, v5litepod-16 (v5e), v5p-64, v6e-8
#   --version=RUNTIME        (or TPU_RUNTIME_VERSION) the TPU software version; by default
#                            tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite (v5e),
#                            v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
#   --spot                   a Spot VM: much cheaper, can be preempted at any time
#   --preemptible            the older preemptible VM (not with --queued)
#   --queued                 queue the request instead of failing when the zone has no capacity
#
# example: tpu/create.sh --project=my-project --zone=us-central2-b --name=gpt \
#            --accelerator-type=v4-32 --spot
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

accelerator=${TPU_ACCELERATOR_TYPE:-}
version=${TPU_RUNTIME_VERSION:-}
provisioning=()
queued=0
while (($#)); do
  case $1 in
    --accelerator-type=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --spot | --preemptible)
      ((${#provisioning[@]} == 0)) || die "pass only one of --spot and --preemptible"
      provisioning=("$1") ;;
    --queued) queued=1 ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
[[ -n $accelerator ]] ||
  die "no accelerator type; pass --accelerator-type=TYPE (e.g. v4-32) or set TPU_ACCELERATOR_TYPE"
if [[ -z $version ]]; then
  case $accelerator in
    v2-* | v3-* | v4-*) version=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) die "no default runtime version for $accelerator; pass --version=RUNTIME" ;;
  esac
fi

if ((queued)); then
  [[ ${provisioning[*]-} != --preemptible ]] ||
    die "queued resources take --spot, not --preemptible"
  run gcloud compute tpus queued-resources create "$name" --node-id="$name" \
    --project="$project" --zone="$zone" --accelerator-type="$accelerator" \
    --runtime-version="$version" "${provisioning[@]}"
else
  run gcloud compute tpus tpu-vm create "$name" --project="$project" --zone="$zone" \
    --accelerator-type="$accelerator" --version="$version" "${provisioning[@]}"
fi
