#!/usr/bin/env bash
# Puts the code on every worker of the TPU VM in ~/gpt_jax and installs it in ~/gpt_jax/.venv
# with the TPU build of JAX. Run it again after a change to update the code.
#
# usage: tpu/setup.sh [--repo=URL] [--ref=REF] [--bucket=gs://BUCKET]
#                     [--project=P --zone=Z --name=N] [--dry-run]
#
#   (default)             copy this checkout's committed code (git archive REF): commit first
#   --repo=URL            have every worker git clone URL (a repository the workers can read)
#   --ref=REF             the branch, tag or commit to use (default HEAD)
#   --bucket=gs://BUCKET  (or TPU_BUCKET) also install Cloud Storage FUSE (gcsfuse) if missing and
#                         mount the bucket at ~/gcs/BUCKET on every worker, where tpu/launch.sh
#                         points gs://BUCKET/... training arguments (see its --help)
#
# example: tpu/setup.sh --project=my-project --zone=us-central2-b --name=gpt --bucket=gs://my-bucket
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo=''
ref=HEAD
bucket=${TPU_BUCKET:-}
while (($#)); do
  case $1 in
    --repo=*) repo=${1#*=} ;;
    --ref=*) ref=${1#*=} ;;
    --bucket=*) bucket=${1#*=} ;;
    *) common_option "$1" ;;
  esac
  shift
done
require_tpu
[[ -z $bucket ]] || bucket=$(bucket_name "$bucket")

if [[ -n $repo ]]; then
  get_code="{ [ -d $CODE_DIR/.git ] || git clone -q $(quote "$repo") $CODE_DIR; } && cd $CODE_DIR"
  get_code+=" && git fetch -q origin $(quote "$ref") && git checkout -q --detach FETCH_HEAD"
else
  # A fixed name, so that the lines --dry-run prints also work when pasted.
  tarball=${TMPDIR:-/tmp}/gpt_jax-$name.tar.gz
  ((dry_run)) || trap 'rm -f "$tarball"' EXIT
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  run git -C "$repo_root" archive --format=tar.gz --output="$tarball" "$ref"
  # Into the home directory: scp destinations are relative to it.
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:gpt_jax.tar.gz" --project="$project" \
    --zone="$zone" --worker=all
  get_code="mkdir -p $CODE_DIR && tar -xzf ~/gpt_jax.tar.gz -C $CODE_DIR && rm ~/gpt_jax.tar.gz"
  get_code+=" && cd $CODE_DIR"
fi
# The project needs Python >= 3.11; the Ubuntu 22.04 TPU images come with 3.10. One pip call
# resolves jax[tpu] together with the project's own jax pin.
python_check='import sys; sys.exit(sys.version_info < (3, 11))'
install="if python3 -c '$python_check'; then py=python3; else sudo apt-get update -qq"
install+=' && sudo apt-get install -y -qq python3.11 python3.11-venv && py=python3.11; fi'
# shellcheck disable=SC2016  # $py is the worker's
install+=' && "$py" -m venv .venv && .venv/bin/pip install -q -U pip'
install+=' && .venv/bin/pip install -q -e . "jax[tpu]"'
if [[ -n $bucket ]]; then
  # Cloud Storage FUSE from Google's apt repository, as its install guide says.
  gcsfuse_repo="deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
  gcsfuse_repo+=" https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main"
  install+=" && if ! command -v gcsfuse > /dev/null; then echo \"$gcsfuse_repo\""
  install+=' | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null'
  install+=' && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg'
  install+=' | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null'
  install+=' && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi'
  install+=" && $(mount_bucket "$bucket")"
fi
on_workers all "$get_code && $install"
