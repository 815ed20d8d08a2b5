"""Regenerates docs/images/timeline.png, the README's example of `vggsound-predict --plot`.

    python scripts/timeline_example.py [--output docs/images/timeline.png] [--seconds 120]

The recording is synthetic (the generated sounds of `datasets/synthetic.py`, one after another
over quiet noise) and the model is random: an untrained width-8 ResNet-18 gives each window's
embedding, and a random linear layer over VGGSound's 309 classes, applied to the embeddings
standardised over the recording's windows, the probabilities (an untrained network's own last
layer sees mostly what all windows share, so it names one class everywhere). The picture shows
the layout, not what a trained model hears: the class names mean nothing here.
It is saved smaller than `plots.plot_timeline` does (fewer dots per inch, a palette of 128
colours), to stay small in the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "images" / "timeline.png"
SECONDS = 120.0
HOP = 2.5  # seconds: windows overlap, as in `vggsound-predict --hop 2.5`
SEED = 3
LOGIT_SCALE = 1.5  # the random head's logits per unit of standardised embedding
DPI = 75
COLOURS = 256


def synthetic_recording(seconds: float, seed: int) -> np.ndarray:
  """int16 at 16 kHz: the synthetic classes' sounds, 2-5 s each with 1-6 s of quiet noise between."""
  from vggsound_jax.audio.decode import SAMPLE_RATE
  from vggsound_jax.datasets import synthetic

  rng = np.random.default_rng(seed)
  n = int(seconds * SAMPLE_RATE)
  mix = rng.normal(0, 30, n)  # a quiet background
  position = int(rng.uniform(1, 3) * SAMPLE_RATE)
  while position < n:
    clip = synthetic.generate_clip(int(rng.integers(len(synthetic.CLASS_NAMES))), rng).astype(np.float64)
    end = min(n, position + clip.size)
    mix[position:end] += clip[: end - position]
    position = end + int(rng.uniform(1, 6) * SAMPLE_RATE)
  return np.clip(np.round(mix), -32768, 32767).astype(np.int16)


def random_model_dir(directory: Path, seed: int) -> Path:
  """A random width-8 ResNet-18 with VGGSound's classes, written as a model directory."""
  from vggsound_jax import labels
  from vggsound_jax.model_dir import save_model
  from vggsound_jax.models import ModelConfig, build_model

  model = build_model(ModelConfig(width=8, num_classes=labels.NUM_CLASSES), seed=seed)
  return save_model(directory / "model", model, class_names=labels.class_names(), source={"random": True})


def random_head(embeddings: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
  """(W, C) softmax of a random linear layer over the embeddings, standardised over the windows."""
  rng = np.random.default_rng(seed)
  x = (embeddings - embeddings.mean(axis=0)) / (embeddings.std(axis=0) + 1e-6)
  logits = LOGIT_SCALE * x @ rng.standard_normal((x.shape[1], num_classes)) / np.sqrt(x.shape[1])
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def make_example(output: Path = OUTPUT, seconds: float = SECONDS, seed: int = SEED) -> Path:
  """Tags a synthetic recording with a random model and writes its timeline, small, to `output`."""
  import soundfile as sf
  from PIL import Image  # matplotlib's own dependency

  from vggsound_jax import Tagger, plots
  from vggsound_jax.audio.decode import SAMPLE_RATE

  with tempfile.TemporaryDirectory() as tmp:
    recording = Path(tmp) / "field_recording.wav"
    sf.write(recording, synthetic_recording(seconds, seed), SAMPLE_RATE, subtype="PCM_16")
    tagger = Tagger(random_model_dir(Path(tmp), seed), backend="jax", hop=HOP, spectrogram=True)
    tags = tagger.tag(recording)
  probs = random_head(tags.window_embeddings, len(tags.class_names), seed)
  tags = dataclasses.replace(tags, window_probs=probs)
  buffer = io.BytesIO()
  plots.timeline_figure(tags, k=8).savefig(buffer, format="png", dpi=DPI)
  image = Image.open(buffer).convert("RGB").quantize(COLOURS)
  output.parent.mkdir(parents=True, exist_ok=True)
  partial = output.with_name(f".{output.name}.partial")
  image.save(partial, format="PNG", optimize=True)
  os.replace(partial, output)
  return output


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", type=Path, default=OUTPUT)
  parser.add_argument("--seconds", type=float, default=SECONDS)
  parser.add_argument("--seed", type=int, default=SEED)
  args = parser.parse_args()
  path = make_example(args.output, args.seconds, args.seed)
  print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
  main()
