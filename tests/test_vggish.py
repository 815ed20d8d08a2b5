"""The Flax VGGish against torchvggish's PyTorch model, its clip head, and VGGish model directories."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vggsound_jax.conversion import vggish as vggish_conversion
from vggsound_jax.model_dir import load_model, save_model
from vggsound_jax.models import ModelConfig, VGGish, build_model, forward, frontend, split_model
from vggsound_jax.serving.inference import Classifier
from vggsound_jax.testing.random_model import random_model
from vggsound_jax.testing.torchvggish_reference import embed, random_vggish

TINY = ModelConfig(arch="vggish", width=4, fc_width=32, num_classes=5)


@functools.cache
def _tiny_state():
  return nnx.state(random_model(TINY, seed=3))


def _tiny(**changes):
  """A tiny VGGish with TINY's parameters, its config changed in fields that keep the shapes."""
  config = dataclasses.replace(TINY, **changes)
  return nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: build_model(config))), _tiny_state())


def _patches(n, seed=0):
  """Log-mel-like patches: values around log(0.01)..log(100)."""
  return np.random.default_rng(seed).uniform(-4.6, 4.6, (n, 96, 64)).astype(np.float32)


def _flax_from_torch(torch_model, **kwargs):
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return vggish_conversion.model_from_arrays(vggish_conversion.arrays_from_state_dict(state_dict), **kwargs)


def test_full_vggish_has_the_published_shapes():
  model = nnx.eval_shape(lambda: build_model(ModelConfig(arch="vggish", num_classes=0)))
  params = split_model(model)[1]["params"]
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 72_141_184
  assert model.conv4_2.kernel.shape == (3, 3, 512, 512)
  assert model.fc1_1.kernel.shape == (6 * 4 * 512, 4096)
  assert model.fc2.kernel.shape == (4096, 128)
  assert model.classifier is None


@pytest.mark.parametrize("embedding_relu", [True, False])
def test_full_size_embeddings_match_torchvggish(embedding_relu):
  torch_model = random_vggish(seed=1, embedding_relu=embedding_relu)
  model = _flax_from_torch(torch_model, embedding_relu=embedding_relu)
  patches = _patches(2)
  expected = embed(torch_model, patches)
  ours = np.asarray(nnx.jit(lambda m, x: m.patch_embeddings(x))(model, jnp.asarray(patches)[..., None]))
  assert (expected < 0).any() != embedding_relu  # the switch is what the reference has
  np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_reduced_width_embeddings_match_the_reduced_reference():
  torch_model = random_vggish(seed=2, width=4, fc_width=32)
  model = _flax_from_torch(torch_model)
  assert (model.config.width, model.config.fc_width) == (4, 32)
  patches = _patches(3, seed=1)
  expected = embed(torch_model, patches)
  ours = np.asarray(model.patch_embeddings(jnp.asarray(patches)[..., None]))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_clip_logits_pool_the_patch_embeddings(aggregation):
  model = _tiny(patch_aggregation=aggregation)
  patches = jnp.asarray(np.stack([_patches(4, seed=2), _patches(4, seed=3)]))[..., None]  # (2 clips, 4 patches)
  logits, embedding = model(patches, return_embedding=True)
  per_patch = np.asarray(model.patch_embeddings(patches))
  assert per_patch.shape == (2, 4, 128)
  pooled = per_patch.mean(axis=1) if aggregation == "mean" else per_patch.max(axis=1)
  np.testing.assert_allclose(np.asarray(embedding), pooled, rtol=1e-5, atol=1e-6)
  kernel, bias = np.asarray(model.classifier.kernel[...]), np.asarray(model.classifier.bias[...])
  np.testing.assert_allclose(np.asarray(logits), pooled @ kernel + bias, rtol=1e-4, atol=1e-6)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32


def test_mean_pooling_equals_averaging_patch_logits():
  model = _tiny()
  patches = jnp.asarray(_patches(5, seed=4)[None])[..., None]
  per_patch_logits = model.classifier(model.patch_embeddings(patches))
  np.testing.assert_allclose(np.asarray(model(patches)), np.asarray(per_patch_logits.mean(axis=1)), atol=1e-6)


def test_frontend_gives_vggish_patches_and_forward_runs_end_to_end():
  audio = np.random.default_rng(0).normal(0, 3000, (2, 32000)).astype(np.int16)  # 2 s: 2 patches
  inputs = frontend(TINY)(jnp.asarray(audio))
  assert inputs.shape == (2, 2, 96, 64, 1)
  model = _tiny()
  probs, embeddings = forward(model, jnp.asarray(audio))
  assert probs.shape == (2, 5) and embeddings.shape == (2, 128)
  np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, rtol=1e-5)
  sigmoid_model = _tiny(output="sigmoid")
  probs, _ = forward(sigmoid_model, jnp.asarray(audio))
  np.testing.assert_allclose(np.asarray(probs), np.asarray(jax.nn.sigmoid(sigmoid_model(inputs))), rtol=1e-6)
  assert not np.allclose(np.asarray(probs).sum(axis=1), 1.0)  # independent classes


def test_model_directory_round_trip(tmp_path):
  """VGGish has no BatchNorm: its batch_stats are empty, and the directory must still work."""
  model = _tiny(output="sigmoid", embedding_relu=False, patch_aggregation="max")
  assert not jax.tree.leaves(split_model(model)[1]["batch_stats"])
  names = [f"class {i}" for i in range(5)]
  save_model(tmp_path / "m", model, class_names=names)
  loaded, metadata = load_model(tmp_path / "m")
  assert isinstance(loaded, VGGish) and loaded.config == model.config
  assert metadata["class_names"] == names
  audio = np.random.default_rng(1).normal(0, 3000, (3, 20000)).astype(np.int16)
  model.eval()
  expected = forward(model, jnp.asarray(audio))
  probs, embeddings = Classifier(loaded, batch_size=4)(audio)
  np.testing.assert_allclose(probs, np.asarray(expected[0]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(embeddings, np.asarray(expected[1]), rtol=1e-5, atol=1e-7)


def test_embedding_only_model_has_no_outputs_but_embeds(tmp_path):
  model = random_model(dataclasses.replace(TINY, num_classes=0))
  save_model(tmp_path / "m", model, class_names=[])
  loaded, metadata = load_model(tmp_path / "m")
  assert metadata["class_names"] == [] and loaded.classifier is None
  probs, embeddings = Classifier(loaded, batch_size=2)(np.ones((1, 16000), np.int16))
  assert probs.shape == (1, 0) and embeddings.shape == (1, 128)


def test_resnet_directories_keep_loading_with_the_default_arch():
  config = ModelConfig(**{"depth": 18, "head": "avgpool", "num_classes": 3, "width": 2, "num_clusters": 16})
  assert (config.arch, config.output) == ("resnet", "softmax")
  with pytest.raises(ValueError, match="unknown arch"):
    ModelConfig(arch="vgg")
