#!/usr/bin/env bash
# Deletes the TPU VM, or with --queued its queued resource together with the VM. A run's
# checkpoints survive only where they were written to Cloud Storage (--workdir=gs://...).
#
# usage: tpu/delete.sh [--queued] [--quiet] [--project=P --zone=Z --name=N] [--dry-run]
#
#   --queued   the TPU was made by tpu/create.sh --queued
#   --quiet    do not ask for confirmation
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

queued=0
quiet=()
while (($#)); do
  case $1 in
    --queued) queued=1 ;;
    --quiet) quiet=(--quiet) ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
if ((queued)); then
  # --force deletes the VM the request created, not only the request.
  run gcloud compute tpus queued-resources delete "$name" --project="$project" --zone="$zone" \
    --force "${quiet[@]}"
else
  run gcloud compute tpus tpu-vm delete "$name" --project="$project" --zone="$zone" "${quiet[@]}"
fi
