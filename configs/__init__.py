"""Experiment configs: `base.py` holds the shared recipe, one small file per experiment."""
