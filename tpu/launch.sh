#!/usr/bin/env bash
# Starts training on every worker of the TPU VM at once, detached: each worker runs
# `python -m gpt_jax.train TRAIN_ARGS --distributed` in ~/gpt_jax (see tpu/setup.sh) and appends
# its output to its own ~/gpt_jax_logs/worker-$(hostname).log. Follow it with tpu/logs.sh and
# stop it with tpu/stop.sh; launching again resumes from the last checkpoint.
#
# usage: tpu/launch.sh [--project=P --zone=Z --name=N] [--dry-run] -- TRAIN_ARGS...
#
# Put the run on Cloud Storage (--workdir=gs://BUCKET/PATH): the checkpoint is written by all
# workers together, and a worker's local disk holds only its own part.
#
# example: tpu/launch.sh --name=gpt -- --config=experiments/gpt2.py --workdir=gs://my-bucket/gpt2
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while (($#)); do
  case $1 in
    --) shift; break ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
(($#)) || die "no training arguments; pass them after --, e.g. -- --config=experiments/gpt2.py"
[[ " $* " == *' --workdir=gs://'* ]] ||
  echo "warning: --workdir is not a gs:// path; on a multi-host slice each worker keeps only its" \
    "own part of the checkpoint" >&2

# Refuses to start a second run next to one that still holds the TPU.
command="set -e; if [ -f $PID_FILE ] && kill -0 \"\$(cat $PID_FILE)\" 2>/dev/null; then"
command+=" echo \"\$(hostname): training is running; stop it first (tpu/stop.sh)\" >&2; exit 1; fi"
command+="; mkdir -p $LOG_DIR; cd $CODE_DIR"
command+="; nohup .venv/bin/python -m gpt_jax.train $(quote "$@") --distributed"
command+=" >> $LOG_DIR/worker-\$(hostname).log 2>&1 < /dev/null & echo \$! > $PID_FILE"
on_workers all "$command"
