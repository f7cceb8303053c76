#!/usr/bin/env bash
# Stops the training that tpu/launch.sh started, on every worker: SIGTERM makes it save a
# checkpoint and exit, and this waits for that; tpu/launch.sh with the same arguments resumes.
#
# usage: tpu/stop.sh [--kill] [--project=P --zone=Z --name=N] [--dry-run]
#
#   --kill   SIGKILL at once, no checkpoint: for a run that hangs
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

signal=TERM
while (($#)); do
  case $1 in
    --kill) signal=KILL ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
command="if [ -f $PID_FILE ] && pid=\$(cat $PID_FILE) && kill -$signal \"\$pid\" 2>/dev/null; then"
command+=" while kill -0 \"\$pid\" 2>/dev/null; do sleep 1; done; echo \"\$(hostname): stopped\";"
command+=" else echo \"\$(hostname): no training running\"; fi"
on_workers all "$command"
