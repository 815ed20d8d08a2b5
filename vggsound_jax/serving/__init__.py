"""Serving: running a model directory or an exported graph on waveforms and files.

`backends.load_classifier` picks the backend (JAX, or an exported graph on a CPU), `tagger.Tagger`
tags recordings of any length in windows, `prediction_files` writes what `vggsound-predict`
finds, `export` writes a model as a graph that runs without JAX.

Rule: serving never imports the training core or the data sets. Running an exported directory
imports neither jax nor TensorFlow: modules on that path import jax only inside the functions of
the JAX backend. This `__init__` imports nothing.
"""
