"""The train step and the training loop: learning, data parallelism, kill-and-resume equality."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Shared by the subprocesses: a tiny config and tiny data (0.5 s tones, one pitch per class).
_COMMON = textwrap.dedent('''
    import os, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from configs import base
    from vggsound_jax import trainer
    from vggsound_jax.inference import enable_compilation_cache
    enable_compilation_cache()  # VGGSOUND_JAX_CACHE: shared by this test's subprocesses

    def tiny_config(steps):
      c = base.get_config()
      c.model.width = 4
      c.model.dtype = "float32"
      c.batch_size = 16
      c.num_train_steps = steps
      c.log_every_steps = 2
      c.data.num_samples = 8000
      c.data.worker_count = 0
      c.eval.num_samples = 8000
      c.eval.batch_size = 16
      c.optimizer.learning_rate = 0.4
      c.schedule.warmup_epochs = 0.2
      c.augment.time_mask_width = 10  # SpecAugment and mixup on: their RNG must resume too
      c.augment.mixup_alpha = 0.4
      c.checkpoint.save_interval_steps = 3
      c.checkpoint.max_to_keep = 2
      return c

    def tones(n, num_classes, seed):
      rng = np.random.default_rng(seed)
      t = np.arange(8000) / 16000
      out = []
      for i in range(n):
        label = i % num_classes
        wave = 6000 * np.sin(2 * np.pi * 250 * (label + 1) * t + rng.uniform(0, 6))
        wave += rng.normal(0, 300, t.size)
        out.append({{"audio": wave.astype(np.int16), "label": label, "clip_id": f"clip{{i:03d}}"}})
      return out

    def tiny_data():
      names = tuple(f"class{{i}}" for i in range(4))
      return trainer.Data(names, tones(64, 4, 0), {{"test": tones(21, 4, 1)}})
''').format(repo=str(REPO))


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Runs of the same program in several subprocesses compile it once."""
  global _CACHE_DIR
  _CACHE_DIR = str(tmp_path_factory.mktemp("jax_cache"))


_CACHE_DIR = None


def _run(script: str, *, devices: int = 1, check: bool = True) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", VGGSOUND_JAX_CACHE=_CACHE_DIR)
  proc = subprocess.run([sys.executable, "-c", _COMMON + textwrap.dedent(script)], env=env,
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


_STEPS_AND_EVAL = '''
    import jax
    from vggsound_jax import evaluation, sharding
    out = {out!r}
    config = tiny_config(10)
    data = tiny_data()
    mesh = sharding.make_mesh()
    assert len(mesh.devices.flat) == {devices}, mesh
    # The schedule and everything else as train_and_evaluate builds them: the compiled
    # programs are shared (through the compilation cache) with the resume test.
    schedule = trainer.make_schedule(config, 10, len(data.train) / config.batch_size)
    tx = trainer.make_optimizer(config, schedule)
    graphs, state = trainer.create_train_state(trainer.model_config(config, 4), tx, 0, mesh)
    step = trainer.make_train_step(config, graphs, tx, schedule, 4, mesh)
    # One fixed batch, five steps.
    batch = {{"audio": np.stack([e["audio"] for e in data.train[:16]]),
             "label": np.array([e["label"] for e in data.train[:16]], np.int32)}}
    losses = []
    for _ in range(5):
      state, metrics = step(state, sharding.shard_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    leaves = [np.asarray(x) for x in jax.tree.leaves((state["params"], state["batch_stats"]))]
    # Evaluation with 21 clips in batches of 16: the last batch is padded.
    source = data.eval["test"]
    batches = []
    for start in range(0, 21, 16):
      ids = np.arange(start, start + 16)
      real = ids < 21
      batches.append({{"audio": np.stack([source[min(i, 20)]["audio"] for i in ids]),
                      "label": np.array([source[min(i, 20)]["label"] for i in ids], np.int32),
                      "mask": real, "index": np.where(real, ids, -1).astype(np.int64)}})
    preds = evaluation.predict(evaluation.make_eval_step(graphs.eval, mesh),
                               (state["params"], state["batch_stats"]), batches, mesh)
    np.savez(out, losses=np.array(losses), probs=preds["probs"], index=preds["index"], *leaves)
'''


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
  """Five train steps on one fixed batch, then an evaluation, on meshes of 1 and 8 devices."""
  tmp = tmp_path_factory.mktemp("devices")
  results = {}
  for devices in (1, 8):
    out = tmp / f"d{devices}.npz"
    _run(_STEPS_AND_EVAL.format(out=str(out), devices=devices), devices=devices)
    results[devices] = dict(np.load(out))
  return results


def test_eight_devices_match_one(device_runs):
  """Same batches on a mesh of 8 simulated CPU devices and of 1: same parameters and outputs.

  BatchNorm statistics and gradients are over the global batch in both cases.
  """
  one, eight = device_runs[1], device_runs[8]
  np.testing.assert_array_equal(one["index"], np.arange(21))  # every clip once, padding dropped
  np.testing.assert_array_equal(eight["index"], np.arange(21))
  leaf_keys = [k for k in one if k.startswith("arr_")]
  assert len(leaf_keys) > 10
  for key in leaf_keys:
    np.testing.assert_allclose(eight[key], one[key], rtol=2e-4, atol=2e-5, err_msg=key)
  np.testing.assert_allclose(eight["probs"], one["probs"], rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(device_runs):
  losses = device_runs[1]["losses"]
  # SpecAugment and mixup draw new masks every step, so the decrease need not be monotone.
  assert losses[-1] < 0.8 * losses[0], losses


_TRAIN = '''
    import signal
    from vggsound_jax import trainer as trainer_mod
    workdir, kill_at, sig = {workdir!r}, {kill_at}, {sig}
    make_iterator = trainer_mod.make_train_iterator

    class Killing:
      """Forwards to the Grain iterator; sends `sig` to this process when batch kill_at is asked."""
      def __init__(self, it):
        self.it, self.count = it, 0
      def __iter__(self):
        return self
      def __next__(self):
        self.count += 1
        if self.count == kill_at:
          os.kill(os.getpid(), sig)
        return next(self.it)
      def __getattr__(self, name):
        return getattr(self.it, name)

    trainer_mod.make_train_iterator = lambda *a, **k: Killing(make_iterator(*a, **k))
    result = trainer_mod.train_and_evaluate(tiny_config(10), workdir, data=tiny_data())
    print("RESULT", result)
'''


def _train(workdir, kill_at=0, sig=signal.SIGKILL):
  return _run(_TRAIN.format(workdir=str(workdir), kill_at=kill_at, sig=int(sig)), check=False)


def _final_params(workdir):
  from flax import nnx

  from vggsound_jax.checkpoint import load_model

  model, _ = load_model(Path(workdir) / "model")
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def test_sigkill_and_sigterm_then_resume_give_the_uninterrupted_parameters(tmp_path):
  reference = _train(tmp_path / "reference")
  assert reference.returncode == 0, reference.stderr[-3000:]

  workdir = tmp_path / "interrupted"
  # Killed while fetching batch 8: steps 3 and 6 were saved (6 perhaps not finished), 7 is lost.
  killed = _train(workdir, kill_at=8)
  assert killed.returncode == -signal.SIGKILL
  assert not (workdir / "model").exists()
  # Preempted: SIGTERM while fetching the second batch after the restart; it saves that
  # step (the async save of step 6 may not have finished before the kill: then it is 5).
  preempted = _train(workdir, kill_at=2, sig=signal.SIGTERM)
  assert preempted.returncode == 0, preempted.stderr[-3000:]
  match = re.search(r"RESULT \{'preempted': (\d+)\}", preempted.stdout)
  assert match and int(match.group(1)) in (5, 8), preempted.stdout
  assert (workdir / "checkpoints" / match.group(1)).is_dir()
  assert not (workdir / "model").exists()
  # The last restart finishes the run.
  finished = _train(workdir)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert "RESULT {'test'" in finished.stdout

  for a, b in zip(_final_params(tmp_path / "reference"), _final_params(workdir), strict=True):
    np.testing.assert_array_equal(a, b)
  assert (workdir / "eval" / "test" / "metrics.json").is_file()


def test_bf16_compute_keeps_float32_parameters():
  from configs import base
  from vggsound_jax import sharding, trainer

  config = base.get_config()
  config.model.width = 4
  config.batch_size = 4
  mesh = sharding.make_mesh()
  schedule = trainer.make_schedule(config, 10, 1.0)
  tx = trainer.make_optimizer(config, schedule)
  model_cfg = trainer.model_config(config, 3)
  assert model_cfg.dtype == "bfloat16"  # the base recipe's mixed precision
  # Shapes and dtypes only, nothing compiled: the state after one step, and the program.
  state = jax.eval_shape(lambda: trainer.init_state(model_cfg, tx, 0))
  batch = {"audio": jax.ShapeDtypeStruct((4, 4000), np.int16),
           "label": jax.ShapeDtypeStruct((4,), np.int32)}
  step = trainer.make_train_step(config, trainer.model_graphs(model_cfg), tx, schedule, 3, mesh)
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert {x.dtype for x in jax.tree.leaves(new_state["params"])} == {np.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(new_state["opt_state"])} <= {np.dtype("float32"), np.dtype("int32")}
  assert metrics["loss"].dtype == np.float32
  hlo = step.lower(state, batch).as_text()
  assert "convolution" in hlo and "bf16" in hlo
