#!/usr/bin/env bash
# Follows one worker's training log (tail -F; Ctrl-C to leave). Worker 0 also prints the metrics.
#
# usage: tpu/logs.sh [--worker=N] [--project=P --zone=Z --name=N] [--dry-run]
#
#   --worker=N   the worker whose log to follow (default 0)
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

worker=0
while (($#)); do
  case $1 in
    --worker=*) worker=${1#*=} ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
[[ $worker =~ ^[0-9]+$ ]] ||
  die "--worker=$(quote "$worker") is not a worker number; pass e.g. --worker=0"
on_workers "$worker" "tail -n 100 -F $LOG_DIR/worker-\$(hostname).log"
