"""Two JAX processes on localhost CPU, started through the documented command line.

Each process is a real `vggsound-train` / `vggsound-evaluate` with its own CPU device(s), joined
through JAX's coordination service and gloo collectives, as on a cluster. The run is the demo
config made tiny.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from vggsound_jax import checkpoints, sharding
from vggsound_jax.model_dir import load_model
from vggsound_jax.models import ModelConfig

pytestmark = pytest.mark.slow  # processes of their own, training: out of the quick loop

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 20
OVERRIDES = [
  f"--config.num_train_steps={STEPS}",
  "--config.model.width=4",
  "--config.batch_size=8",
  "--config.data.crop_samples=4000",
  "--config.eval.num_samples=4000",
  "--config.eval.batch_size=48",
  "--config.checkpoint.save_interval_steps=5",
  "--config.log_every_steps=10",
  "--config.augment.time_mask_width=10",
  "--config.augment.mixup_alpha=0.4",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: Path) -> dict:
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(devices),
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    VGGSOUND_JAX_CACHE=str(cache),
  )


def _start(command, workdir, data_dir, cache, *, processes=1, devices=1, extra=(), port=None, wrap_first=()):
  """`processes` copies of `vggsound-COMMAND` over a shared workdir and data_dir; process 0's
  command line is prefixed with `wrap_first`."""
  args = [
    str(BIN / f"vggsound-{command}"),
    f"--config={REPO / 'configs' / 'demo.py'}",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *OVERRIDES,
    *extra,
  ]
  if processes == 1:
    return [
      subprocess.Popen(
        args, env=_env(devices, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8"
      )
    ]
  port = port or _free_port()
  return [
    subprocess.Popen(
      [
        *(wrap_first if i == 0 else ()),
        *args,
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={processes}",
        f"--process_id={i}",
        "--initialization_timeout=60",
      ],
      env=_env(devices, cache),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      encoding="utf-8",
    )
    for i in range(processes)
  ]


def _finish(procs, timeout=900):
  """(returncode, stdout, stderr) of each process; none is left running, whatever happens."""
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _params(workdir):
  model, _ = load_model(Path(workdir) / "model")  # onto one device, whatever wrote it
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("multiprocess")


@pytest.fixture(scope="module")
def two_by_one(tmp):
  """Two processes of one device each, started at once on an empty data_dir."""
  results = _finish(_start("train", tmp / "2x1", tmp / "data", tmp / "cache", processes=2))
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  return results


def test_two_processes_build_the_data_once_and_train(tmp, two_by_one):
  (_, out0, _), (_, out1, _) = two_by_one
  assert '"top1"' in out0 and '"top1"' not in out1  # only process 0 reports
  assert (tmp / "2x1" / "eval" / "test" / "metrics.json").is_file()
  assert len(list((tmp / "data" / "vggsound" / "synthetic").iterdir())) == 1
  assert not list((tmp / "data").rglob("*incomplete*"))
  # Every test clip counted once, across the two processes.
  predictions = np.load(tmp / "2x1" / "eval" / "test" / "predictions.npz")
  np.testing.assert_array_equal(predictions["index"], np.arange(96))
  assert len(set(predictions["clip_id"].tolist())) == 96


def test_one_process_with_two_devices_trains_the_same_model(tmp, two_by_one):
  [(rc, _, err)] = _finish(_start("train", tmp / "1x2", tmp / "data", tmp / "cache", devices=2))
  assert rc == 0, err[-3000:]
  for a, b in zip(_params(tmp / "2x1"), _params(tmp / "1x2"), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  one = np.load(tmp / "1x2" / "eval" / "test" / "predictions.npz")
  two = np.load(tmp / "2x1" / "eval" / "test" / "predictions.npz")
  np.testing.assert_allclose(one["probs"], two["probs"], rtol=1e-3, atol=1e-5)
  np.testing.assert_array_equal(one["clip_id"], two["clip_id"])


def test_sigterm_to_one_process_saves_one_step_and_the_run_resumes_exactly(tmp, two_by_one):
  workdir = tmp / "preempted"
  procs = _start("train", workdir, tmp / "data", tmp / "cache", processes=2)
  deadline = time.monotonic() + 600
  while not (workdir / "checkpoints" / "10").is_dir():
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint 10"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # a scheduler's notice to one host
  results = _finish(procs)
  steps = set()
  for rc, out, err in results:
    assert rc == 143, err[-3000:]
    steps.add(int(re.search(r"preempted at step (\d+)", out).group(1)))
  [step] = steps  # both processes stopped at the same step
  assert 10 < step < STEPS and (workdir / "checkpoints" / str(step)).is_dir()
  assert not (workdir / "model").exists()
  shutil.copytree(workdir / "checkpoints", tmp / "one_device" / "checkpoints")

  # The same command resumes and ends exactly where the uninterrupted run did.
  for rc, _, err in _finish(_start("train", workdir, tmp / "data", tmp / "cache", processes=2)):
    assert rc == 0, err[-3000:]
  for a, b in zip(_params(tmp / "2x1"), _params(workdir), strict=True):
    np.testing.assert_array_equal(a, b)

  # A resized job: the checkpoint of two processes resumes on one process with one device.
  [(rc, _, err)] = _finish(_start("train", tmp / "one_device", tmp / "data", tmp / "cache"))
  assert rc == 0, err[-3000:]
  assert f"resuming from step {step}" in err
  for a, b in zip(_params(tmp / "2x1"), _params(tmp / "one_device"), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_exported_model_evaluates_on_one_device(tmp, two_by_one):
  [(rc, out, err)] = _finish(
    _start("evaluate", tmp / "again", tmp / "data", tmp / "cache", extra=[f"--checkpoint={tmp / '2x1' / 'model'}"])
  )
  assert rc == 0, err[-3000:]
  again = np.load(tmp / "again" / "eval" / "test" / "predictions.npz")
  first = np.load(tmp / "2x1" / "eval" / "test" / "predictions.npz")
  np.testing.assert_allclose(again["probs"], first["probs"], rtol=1e-3, atol=1e-5)


def _finish_timed(procs, timeout=120):
  """(seconds from now until it exited, returncode, stdout, stderr) of each process; none is
  left running (seconds is None for one that had to be killed)."""
  start, results = time.monotonic(), [None] * len(procs)

  def read(i):
    out, err = procs[i].communicate()
    results[i] = (time.monotonic() - start, procs[i].returncode, out, err)

  threads = [threading.Thread(target=read, args=(i,)) for i in range(len(procs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(max(timeout - (time.monotonic() - start), 0))
  late = [p for p in procs if p.poll() is None]
  for p in late:
    p.kill()
  for t in threads:
    t.join()
  return [(None if p in late else seconds, *rest) for p, (seconds, *rest) in zip(procs, results, strict=True)]


def _wait_for(path, procs, timeout=600):
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"no {path}"
    time.sleep(0.05)


def test_a_killed_process_ends_the_run_at_once_and_its_last_checkpoint_restores(tmp, two_by_one, load_config):
  workdir = tmp / "killed"
  procs = _start("train", workdir, tmp / "data", tmp / "cache", processes=2)
  _wait_for(workdir / "checkpoints" / "10", procs)
  procs[1].send_signal(signal.SIGKILL)  # an OOM kill, a lost node
  (seconds, rc, _, err), _ = _finish_timed(procs)
  assert seconds is not None and seconds < 30 and rc == 1, err[-3000:]
  assert "process 1 stopped" in _one_error_line(err)
  assert "Extension modules" not in err and "Check failure" not in err

  # The newest complete checkpoint is there and restores.
  config = load_config("configs/demo.py", "model.width=4")
  manager = checkpoints.checkpoint_manager(workdir, read_only=True)
  step = manager.latest_step()
  assert step >= 10
  model_cfg = ModelConfig.from_config(config.model, 8)
  state = checkpoints.restore_model_state(manager, model_cfg, sharding.make_mesh(jax.devices()[:1]))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def _can_mount_read_only(directory):
  probe = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} {directory}"
  return (
    shutil.which("unshare")
    and subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0
  )


def test_a_model_directory_only_process_0_cannot_write_ends_every_process(tmp, two_by_one):
  workdir = tmp / "read_only_for_0"
  (workdir / "model").mkdir(parents=True)  # empty: the run may replace it
  # As root (as CI runs) a chmod does not stop writes: a read-only bind mount in a mount namespace does.
  assert _can_mount_read_only(workdir / "model"), "needs unshare -m and mount (run the tests as root)"
  # Process 0 runs in a mount namespace of its own, where WORKDIR/model is read-only.
  model = workdir / "model"
  remount = f'mount --bind {model} {model} && mount -o remount,bind,ro {model} {model} && exec "$@"'
  procs = _start(
    "train",
    workdir,
    tmp / "data",
    tmp / "cache",
    processes=2,
    extra=["--config.num_train_steps=2"],
    wrap_first=["unshare", "-m", "sh", "-c", remount, "sh"],
  )
  results = _finish_timed(procs, timeout=600)
  times = [seconds for seconds, *_ in results]
  assert None not in times and abs(times[0] - times[1]) < 30, times
  for i, (_, rc, _, err) in enumerate(results):
    line = _one_error_line(err)
    assert rc == 1 and "model" in line and f"stopping process {i}" in line, err[-3000:]
  assert "process 0 failed" in _one_error_line(results[1][3])
  assert not any(model.iterdir())  # nothing was written where process 0 could not write


def _one_error_line(err: str) -> str:
  lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


def test_bad_launches_fail_fast_with_one_line(tmp):
  # Half the explicit flags.
  [(rc, _, err)] = _finish(
    _start("train", tmp / "half", tmp / "data", tmp / "cache", extra=["--num_processes=2", "--process_id=1"])
  )
  assert rc == 1 and "--coordinator_address" in _one_error_line(err)
  # Nobody at the coordinator's address: a bounded wait, then the address.
  port = _free_port()
  start = time.monotonic()
  [(rc, _, err)] = _finish(
    _start(
      "train",
      tmp / "alone",
      tmp / "data",
      tmp / "cache",
      extra=[
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        "--process_id=1",
        "--initialization_timeout=5",
      ],
    )
  )
  assert rc == 1 and f"localhost:{port}" in _one_error_line(err)
  assert time.monotonic() - start < 120
  # Processes started with different configs: every process says so, none hangs.
  port = _free_port()
  args = [f"--coordinator_address=localhost:{port}", "--num_processes=2", "--initialization_timeout=60"]
  procs = [
    subprocess.Popen(
      [
        str(BIN / "vggsound-train"),
        f"--config={REPO / 'configs' / 'demo.py'}",
        f"--workdir={tmp / 'mixed'}",
        f"--config.data.data_dir={tmp / 'data'}",
        *OVERRIDES,
        *args,
        f"--process_id={i}",
        f"--config.seed={i}",
      ],
      env=_env(1, tmp / "cache"),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      encoding="utf-8",
    )
    for i in range(2)
  ]
  for rc, _, err in _finish(procs, timeout=200):
    assert rc == 1 and "differs from process 0" in _one_error_line(err)
