"""The train step and the training loop: learning, data parallelism, kill-and-resume equality."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import NUM_CLASSES, tiny_config, tiny_data

from vggsound_jax import checkpoints, default_config, evaluation, optimizers, sharding, train_state, trainer
from vggsound_jax.model_dir import load_model
from vggsound_jax.models import ModelConfig, graphdefs

TESTS = Path(__file__).resolve().parent


def _steps_and_eval(devices) -> dict:
  """Five train steps on one fixed batch, then an evaluation of 21 clips, on a mesh of `devices`."""
  config = tiny_config(10)
  data = tiny_data()
  mesh = sharding.make_mesh(devices)
  schedule = optimizers.make_schedule(config, 10, len(data.train) / config.batch_size)
  tx = optimizers.make_optimizer(config, schedule)
  model_cfg = ModelConfig.from_config(config.model, NUM_CLASSES)
  graphs = graphdefs(model_cfg)
  state = train_state.create_train_state(model_cfg, tx, 0, mesh)
  step = train_state.make_train_step(config, graphs, tx, schedule, NUM_CLASSES, mesh)
  batch = {
    "audio": np.stack([e["audio"] for e in data.train[:16]]),
    "label": np.array([e["label"] for e in data.train[:16]], np.int32),
  }
  losses = []
  for _ in range(5):
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  # Evaluation with 21 clips in batches of 16: the last batch is padded.
  source = data.eval["test"]
  batches = []
  for start in range(0, 21, 16):
    ids = np.arange(start, start + 16)
    real = ids < 21
    batches.append(
      {
        "audio": np.stack([source[min(i, 20)]["audio"] for i in ids]),
        "label": np.array([source[min(i, 20)]["label"] for i in ids], np.int32),
        "mask": real,
        "index": np.where(real, ids, -1).astype(np.int64),
      }
    )
  preds = evaluation.predict(evaluation.make_eval_step(graphs.eval, mesh), state["model"], batches, mesh)
  return {
    "losses": np.array(losses),
    "probs": preds["probs"],
    "index": preds["index"],
    "leaves": [np.asarray(x) for x in jax.tree.leaves(state["model"])],
  }


@pytest.fixture(scope="module")
def device_runs():
  return {1: _steps_and_eval(jax.devices()[:1]), "all": _steps_and_eval(jax.devices())}


@pytest.mark.slow
def test_several_devices_match_one(device_runs):
  """Same batches on a mesh of all CPU devices (conftest.py) and of 1: same parameters and outputs.

  BatchNorm statistics and gradients are over the global batch in both cases.
  """
  one, several = device_runs[1], device_runs["all"]
  np.testing.assert_array_equal(one["index"], np.arange(21))  # every clip once, padding dropped
  np.testing.assert_array_equal(several["index"], np.arange(21))
  assert len(one["leaves"]) > 10
  for a, b in zip(several["leaves"], one["leaves"], strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(several["probs"], one["probs"], rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(several["losses"], one["losses"], rtol=1e-4)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(device_runs):
  losses = device_runs[1]["losses"]
  # SpecAugment and mixup draw new masks every step, so the decrease need not be monotone.
  assert losses[-1] < 0.8 * losses[0], losses


def _train(workdir, cache, kill_at=0, sig=signal.SIGKILL) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", VGGSOUND_JAX_CACHE=str(cache))
  return subprocess.run(
    [sys.executable, str(TESTS / "train_tiny.py"), str(workdir), str(kill_at), str(int(sig))],
    env=env,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=300,
  )


def _final_leaves(workdir):
  model, _ = load_model(Path(workdir) / "model")
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_give_the_uninterrupted_parameters(tmp_path):
  cache = tmp_path / "jax_cache"
  reference = _train(tmp_path / "reference", cache)
  assert reference.returncode == 0, reference.stderr[-3000:]

  workdir = tmp_path / "interrupted"
  # Killed while fetching batch 8: steps 3 and 6 were saved (6 perhaps not finished), 7 is lost.
  killed = _train(workdir, cache, kill_at=8)
  assert killed.returncode == -signal.SIGKILL
  assert not (workdir / "model").exists()
  # Preempted: SIGTERM while fetching the second batch after the restart; it saves that
  # step (the async save of step 6 may not have finished before the kill: then it is 5).
  preempted = _train(workdir, cache, kill_at=2, sig=signal.SIGTERM)
  assert preempted.returncode == 0, preempted.stderr[-3000:]
  match = re.search(r"RESULT \{'preempted': (\d+)\}", preempted.stdout)
  assert match and int(match.group(1)) in (5, 8), preempted.stdout
  assert (workdir / "checkpoints" / match.group(1)).is_dir()
  assert not (workdir / "model").exists()
  # The last restart finishes the run.
  finished = _train(workdir, cache)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert "RESULT {'test'" in finished.stdout

  for a, b in zip(_final_leaves(tmp_path / "reference"), _final_leaves(workdir), strict=True):
    np.testing.assert_array_equal(a, b)
  assert (workdir / "eval" / "test" / "metrics.json").is_file()


def test_bf16_compute_keeps_float32_parameters():
  config = default_config.get_config()
  config.model.width = 4
  config.batch_size = 8
  mesh = sharding.make_mesh()
  schedule = optimizers.make_schedule(config, 10, 1.0)
  tx = optimizers.make_optimizer(config, schedule)
  model_cfg = ModelConfig.from_config(config.model, 3)
  assert model_cfg.dtype == "bfloat16"  # the base recipe's mixed precision
  # Shapes and dtypes only, nothing compiled: the state after one step, and the program.
  state = jax.eval_shape(lambda: train_state.init_state(model_cfg, tx, 0))
  batch = {"audio": jax.ShapeDtypeStruct((8, 4000), np.int16), "label": jax.ShapeDtypeStruct((8,), np.int32)}
  step = train_state.make_train_step(config, graphdefs(model_cfg), tx, schedule, 3, mesh)
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert {x.dtype for x in jax.tree.leaves(new_state["model"]["params"])} == {np.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(new_state["opt_state"])} <= {np.dtype("float32"), np.dtype("int32")}
  assert metrics["loss"].dtype == np.float32
  hlo = step.lower(state, batch).as_text()
  assert "convolution" in hlo and "bf16" in hlo


def _poisoned_schedule(monkeypatch, bad_step: int):
  """The learning rate is NaN at one step, so that step's update (and only it) is not finite."""
  make_schedule = optimizers.make_schedule

  def poisoned(*args, **kwargs):
    schedule = make_schedule(*args, **kwargs)
    return lambda count: jnp.where(count == bad_step - 1, jnp.nan, schedule(count))

  monkeypatch.setattr(optimizers, "make_schedule", poisoned)


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
  """A run whose step 8 is not finite: checkpoints every 3 steps, the policy "stop"."""
  workdir = tmp_path_factory.mktemp("diverged")
  with pytest.MonkeyPatch.context() as monkeypatch:
    _poisoned_schedule(monkeypatch, bad_step=8)
    with pytest.raises(trainer.DivergedError) as error:
      trainer.train_and_evaluate(tiny_config(10), workdir, data=tiny_data())
  return workdir, str(error.value)


def test_a_nonfinite_step_stops_the_run_and_is_never_saved(diverged_run):
  workdir, message = diverged_run
  assert "not finite at step 8" in message and "last good checkpoint is step 6" in message
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
  assert not (workdir / "model").exists()


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(diverged_run, capsys):
  workdir, _ = diverged_run
  for path in (workdir / "checkpoints" / "6").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"\0garbage" * 4)
  config = tiny_config(10)
  mesh = sharding.make_mesh()
  schedule = optimizers.make_schedule(config, 10, 4.0)
  tx = optimizers.make_optimizer(config, schedule)
  like = train_state.create_train_state(ModelConfig.from_config(config.model, NUM_CLASSES), tx, 0, mesh)
  restored = checkpoints.restore(checkpoints.checkpoint_manager(workdir, config), like, mesh)
  assert int(restored["step"]) == 3
  assert "resuming from step 3" in capsys.readouterr().err
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["model"]))


@pytest.mark.slow
def test_skip_drops_the_nonfinite_update_and_finishes(tmp_path, monkeypatch):
  _poisoned_schedule(monkeypatch, bad_step=4)
  config = tiny_config(6)
  config.nonfinite = "skip"
  results = trainer.train_and_evaluate(config, tmp_path, data=tiny_data())
  assert results["test"]["num_clips"] == 21
  model, _ = load_model(tmp_path / "model")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nnx.state(model)))
