"""Converting VGGish's two released weight forms, written at test time with random weights, and
the PCA post-processing against torchvggish's."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vggsound_jax.cli import convert as convert_cli
from vggsound_jax.conversion import vggish as vggish_conversion
from vggsound_jax.errors import ConversionError
from vggsound_jax.model_dir import load_model
from vggsound_jax.models import VGGish
from vggsound_jax.testing.torchvggish_reference import embed, import_torchvggish, random_vggish

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
WIDTH, FC_WIDTH = 4, 32
# The TF checkpoint's variable scopes, written out from vggish_slim.py, and whether a max-pool follows.
TF_CONVS = (("conv1", True), ("conv2", True), ("conv3/conv3_1", False), ("conv3/conv3_2", True))
TF_CONVS += (("conv4/conv4_1", False), ("conv4/conv4_2", True))
TF_FCS = ("fc1/fc1_1", "fc1/fc1_2")


def _patches(n, seed=0):
  return np.random.default_rng(seed).uniform(-4.6, 4.6, (n, 96, 64)).astype(np.float32)


def _random_tf_variables(seed=0):
  """{name: value} of a reduced-width VGGish in the TF checkpoint's names and layouts."""
  rng = np.random.default_rng(seed)
  variables, cin = {}, 1
  for (scope, _), multiple in zip(TF_CONVS, (1, 2, 4, 4, 8, 8)):
    cout = multiple * WIDTH
    variables[f"vggish/{scope}/weights"] = rng.normal(0, (2 / (9 * cin)) ** 0.5, (3, 3, cin, cout))
    variables[f"vggish/{scope}/biases"] = rng.normal(0, 0.1, cout)
    cin = cout
  fin = 6 * 4 * cin
  for scope, fout in ((TF_FCS[0], FC_WIDTH), (TF_FCS[1], FC_WIDTH), ("fc2", 128)):
    variables[f"vggish/{scope}/weights"] = rng.normal(0, (2 / fin) ** 0.5, (fin, fout))
    variables[f"vggish/{scope}/biases"] = rng.normal(0, 0.1, fout)
    fin = fout
  return {k: v.astype(np.float32) for k, v in variables.items()}


def _write_tf_checkpoint(path, variables, version):
  """A TF1 checkpoint as Google's Saver writes it (`version` "V1": one file, as released)."""
  import tensorflow as tf

  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    for name, value in variables.items():
      tf1.get_variable(name, initializer=value)
    tf1.train.get_or_create_global_step()  # not a VGGish variable: ignored
    saver = tf1.train.Saver(write_version=getattr(tf1.train.SaverDef, version))
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      saver.save(session, os.fspath(path), write_meta_graph=False)
  return path


def _tf_reference(variables, patches, embedding_relu=True):
  """vggish_slim's forward pass in TensorFlow ops: SAME convs and pools, slim.flatten, fc."""
  import tensorflow as tf

  x = tf.constant(patches[..., None])
  for scope, pool in TF_CONVS:
    x = tf.nn.relu(
      tf.nn.conv2d(x, variables[f"vggish/{scope}/weights"], 1, "SAME") + variables[f"vggish/{scope}/biases"]
    )
    if pool:
      x = tf.nn.max_pool2d(x, 2, 2, "SAME")
  x = tf.reshape(x, (x.shape[0], -1))
  for scope in TF_FCS:
    x = tf.nn.relu(x @ variables[f"vggish/{scope}/weights"] + variables[f"vggish/{scope}/biases"])
  x = x @ variables["vggish/fc2/weights"] + variables["vggish/fc2/biases"]
  return (tf.nn.relu(x) if embedding_relu else x).numpy()


def _embeddings(model, patches):
  return np.asarray(model.patch_embeddings(jnp.asarray(patches)[..., None]))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["V1", "V2"])
def test_tf_checkpoint_converts_and_matches_tensorflow(tmp_path, version):
  variables = _random_tf_variables(seed=1)
  checkpoint = _write_tf_checkpoint(tmp_path / "vggish_model.ckpt", variables, version)
  assert vggish_conversion.checkpoint_kind(checkpoint) == vggish_conversion.TENSORFLOW
  assert convert_cli.main(["--input", str(checkpoint), "--output", str(tmp_path / "out")]) == 0
  model, metadata = load_model(tmp_path / "out")
  assert isinstance(model, VGGish) and metadata["class_names"] == []
  assert (model.config.width, model.config.fc_width, model.config.num_classes) == (WIDTH, FC_WIDTH, 0)
  assert metadata["source"]["format"] == "tensorflow"
  patches = _patches(3)
  expected = _tf_reference(variables, patches)
  np.testing.assert_allclose(_embeddings(model, patches), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_tf_checkpoint_without_the_embedding_relu(tmp_path):
  variables = _random_tf_variables(seed=2)
  checkpoint = _write_tf_checkpoint(tmp_path / "vggish_model.ckpt", variables, "V2")
  model = vggish_conversion.model_from_arrays(
    vggish_conversion.arrays_from_tf_checkpoint(checkpoint), embedding_relu=False
  )
  patches = _patches(2, seed=3)
  expected = _tf_reference(variables, patches, embedding_relu=False)
  assert (expected < 0).any()
  np.testing.assert_allclose(_embeddings(model, patches), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_tf_checkpoint_names_what_is_missing_or_extra(tmp_path):
  variables = _random_tf_variables()
  del variables["vggish/fc1/fc1_2/biases"]
  variables["vggish/fc3/weights"] = np.zeros((2, 2), np.float32)
  checkpoint = _write_tf_checkpoint(tmp_path / "bad.ckpt", variables, "V2")
  with pytest.raises(
    ConversionError,
    match=r"bad\.ckpt: .*missing: vggish/fc1/fc1_2/biases.*"
    r"unexpected: vggish/fc3/weights",
  ):
    vggish_conversion.convert(checkpoint, tmp_path / "out")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_torchvggish_state_dict_converts_and_matches_torch(tmp_path, zip_format, capsys):
  torch_model = random_vggish(seed=3, width=WIDTH, fc_width=FC_WIDTH)
  path = tmp_path / "vggish-10086976.pth"
  torch.save(torch_model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
  assert vggish_conversion.checkpoint_kind(path) == vggish_conversion.PYTORCH
  assert convert_cli.main(["--input", str(path), "--output", str(tmp_path / "out")]) == 0
  assert "VGGish, width 4, fc width 32" in capsys.readouterr().out
  model, metadata = load_model(tmp_path / "out")
  assert metadata["source"]["format"] == "pytorch" and model.config.embedding_relu
  patches = _patches(3, seed=4)
  expected = embed(torch_model, patches)
  np.testing.assert_allclose(_embeddings(model, patches), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_torch_state_dict_problems_are_named(tmp_path):
  state_dict = {k: v.numpy() for k, v in random_vggish(width=WIDTH, fc_width=FC_WIDTH).state_dict().items()}
  extra = dict(state_dict, **{"pproc.matrix": np.zeros(2, np.float32)})
  del extra["features.13.bias"]
  with pytest.raises(ValueError, match=r"missing: features\.13\.bias; unexpected: pproc\.matrix"):
    vggish_conversion.arrays_from_state_dict(extra)
  wrong = dict(state_dict, **{"embeddings.4.weight": np.zeros((64, FC_WIDTH), np.float32)})
  with pytest.raises(ValueError, match=r"fc2\.kernel \(32, 64\) \(expected \(32, 128\)\)"):
    vggish_conversion.model_from_arrays(vggish_conversion.arrays_from_state_dict(wrong))
  nan = dict(state_dict)
  nan["features.3.weight"] = np.full_like(nan["features.3.weight"], np.nan)
  with pytest.raises(ValueError, match=r"NaN or inf in conv2\.kernel"):
    vggish_conversion.model_from_arrays(vggish_conversion.arrays_from_state_dict(nan))


def test_layer_names_follow_both_releases():
  names = vggish_conversion.torch_names()
  assert names["conv1"] == "features.0" and names["conv4_2"] == "features.13" and names["fc2"] == "embeddings.4"
  assert vggish_conversion.tf_name("conv3_1", "kernel") == "vggish/conv3/conv3_1/weights"
  assert vggish_conversion.tf_name("fc2", "bias") == "vggish/fc2/biases"


def _pca_params(seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(0, 0.3, (128, 128)), rng.normal(0, 0.5, 128)


def _torch_postprocess(embeddings, eigen_vectors, means):
  """torchvggish's Postprocessor, without its download of the released parameters."""
  postprocessor = object.__new__(import_torchvggish().torchvggish.Postprocessor)
  postprocessor._pca_matrix = torch.as_tensor(eigen_vectors).float()
  postprocessor._pca_means = torch.as_tensor(means.reshape(-1, 1)).float()
  return postprocessor.postprocess(torch.as_tensor(embeddings)).numpy()


def test_pca_postprocessing_matches_torchvggish(tmp_path, monkeypatch):
  eigen_vectors, means = _pca_params()
  embeddings = np.random.default_rng(1).normal(0, 2, (40, 128)).astype(np.float32)
  np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=eigen_vectors, pca_means=means.reshape(-1, 1))
  rounded = vggish_conversion.Postprocessor.from_npz(tmp_path / "vggish_pca_params.npz", rounding="round")(embeddings)
  expected = _torch_postprocess(embeddings, eigen_vectors, means)
  assert rounded.dtype == np.uint8 and rounded.shape == (40, 128)
  assert {0, 255} <= set(np.unique(rounded).tolist())  # values beyond +-2 are clipped
  # torchvggish computes in float32: a value within rounding of .5 may land on either side.
  assert np.abs(rounded.astype(int) - expected).max() <= 1 and np.mean(rounded == expected) > 0.99
  # Google truncates where torchvggish rounds: the same with floor (all values are >= 0).
  monkeypatch.setattr(torch, "round", torch.floor)
  truncated = vggish_conversion.Postprocessor(eigen_vectors, means)(embeddings)
  expected = _torch_postprocess(embeddings, eigen_vectors, means)
  assert np.abs(truncated.astype(int) - expected).max() <= 1 and np.mean(truncated == expected) > 0.99


def test_pca_params_problems_are_named(tmp_path):
  np.savez(tmp_path / "p.npz", pca_eigen_vectors=np.zeros((128, 128)))
  with pytest.raises(ValueError, match=r"p\.npz: not VGGish PCA parameters"):
    vggish_conversion.Postprocessor.from_npz(tmp_path / "p.npz")


def test_export_embeddings_per_patch(tmp_path):
  torch_model = random_vggish(seed=5, width=WIDTH, fc_width=FC_WIDTH)
  model = vggish_conversion.model_from_arrays(
    vggish_conversion.arrays_from_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
  )
  audio = np.random.default_rng(2).normal(0, 3000, (2, 3 * 16000)).astype(np.int16)
  embeddings = vggish_conversion.export_embeddings(model, audio)
  assert embeddings.shape == (2, 3, 128) and embeddings.dtype == np.float32
  examples = import_torchvggish().vggish_input.waveform_to_examples(audio[1] / 32768.0, 16000, return_tensor=False)
  expected = embed(torch_model, examples)
  np.testing.assert_allclose(embeddings[1], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
  quantised = vggish_conversion.export_embeddings(model, audio, vggish_conversion.Postprocessor(*_pca_params()))
  assert quantised.shape == (2, 3, 128) and quantised.dtype == np.uint8
