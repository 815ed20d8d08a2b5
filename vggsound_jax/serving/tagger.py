"""Tagging recordings of any length from Python: `vggsound_jax.Tagger`.

    tagger = Tagger("models/I")
    tags = tagger.tag("field_recording.flac")        # a file of any length
    tags = tagger.tag(waveform, sample_rate=44100)    # or samples in memory
    tags.top(5)                                       # [(label, probability), ...] of the whole file
    tags.starts, tags.ends, tags.window_probs         # one row per window

A recording is classified in windows of `window` seconds (the model's 10 s by default) every
`hop` seconds (default: `window`, no overlap), each window seen exactly as the original sees a
clip, and summarised by the mean (`probs`, `embedding`) and the maximum (`max_probs`) over its
windows. Which windows (`window_starts`):

- a recording no longer than a window is one window, tiled to the window's length as the
  original tiles a short clip: a VGGSound clip gives what the original gives;
- a longer one gets a window at every hop that fits, plus one window ending at the file's end
  when at least a tenth of a window would otherwise go unseen. A tail shorter than that (a
  VGGSound clip of 10.02 s) is left out, so such a clip is still one window, its first 10 s.

Files are decoded as a stream (`audio.stream_audio`), a few windows ahead of the model, so a
one-hour recording takes the memory of a few windows plus its per-window results. Windows of
several files share batches; files are decoded in parallel threads while the model runs.

With `Tagger(..., spectrogram=True)` each recording's `Tags` also holds a coarse spectrogram of
the whole recording (`audio.overview`, at most about 1 MB however long), computed in the
decoding threads from the same stream, for `Tags.plot` (`vggsound_jax.plots.plot_timeline`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vggsound_jax.audio import decode as audio
from vggsound_jax.audio.overview import Overview, OverviewBuilder
from vggsound_jax.errors import PathError

# A tail shorter than this fraction of a window gets no window of its own. A tenth is where the
# original starts tiling short clips, so what it keeps of a clip is what is kept of a tail.
MIN_TAIL_FRACTION = 0.1
# The shortest window: about VGGish's one patch (0.96 s), and ten spectrogram frames for ResNets.
MIN_WINDOW_SECONDS = 1.0
# Windows read ahead from a long file while the model runs: bounds its decoded audio in memory.
_WINDOWS_AHEAD = 4
IN_MEMORY = "<waveform>"


class NonFiniteOutputError(PathError):
  """The model gave NaN or inf for a recording (a damaged model, or a pathological input)."""


@dataclasses.dataclass(frozen=True)
class Tags:
  """What the model says about one recording: per window, and summarised over the windows."""

  source: str  # the file, or IN_MEMORY
  duration: float  # seconds of decoded 16 kHz audio
  starts: np.ndarray  # (W,) window starts, seconds
  ends: np.ndarray  # (W,) window ends, seconds (a window of a recording shorter than it ends early)
  window_probs: np.ndarray  # (W, C) float32
  window_embeddings: np.ndarray  # (W, D) float32
  class_names: Sequence[str]
  spectrogram: Overview | None = None  # the whole recording's, coarse; with Tagger(spectrogram=True)

  @property
  def probs(self) -> np.ndarray:
    """(C,) the mean over windows: the whole recording's probabilities."""
    return self.window_probs.mean(axis=0)

  @property
  def max_probs(self) -> np.ndarray:
    """(C,) the maximum over windows: what is heard anywhere, however briefly."""
    return self.window_probs.max(axis=0)

  @property
  def embedding(self) -> np.ndarray:
    """(D,) the mean of the windows' embeddings."""
    return self.window_embeddings.mean(axis=0)

  def top(self, k: int = 5, probs: np.ndarray | None = None) -> list[tuple[str, float]]:
    """The k most probable classes of `probs` (default: the mean over windows), best first."""
    return top_classes(self.probs if probs is None else probs, self.class_names, k)

  def plot(self, path: str | os.PathLike, k: int = 10) -> Path:
    """Writes the recording's timeline as a PNG: its spectrogram (when kept) above the
    probabilities over time of the k classes with the highest maximum; returns the path."""
    from vggsound_jax import plots  # matplotlib: loaded only to plot

    return plots.plot_timeline(self, path, k=k)


def top_classes(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
  """[(label, probability)] of the k largest of `probs`, ties in class order."""
  order = np.argsort(-probs, kind="stable")[: min(k, len(class_names))]
  # str() of a float32 is its shortest exact decimal; float() of that is what JSON prints.
  return [(class_names[i], float(str(probs[i]))) for i in order]


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
  """Start samples of the windows of a recording of `num_samples` (see the module doc)."""
  if num_samples <= window:
    return [0]
  starts = list(range(0, num_samples - window + 1, hop))
  if num_samples - (starts[-1] + window) >= MIN_TAIL_FRACTION * window:
    starts.append(num_samples - window)
  return starts


@dataclasses.dataclass
class _Window:
  start: int  # samples
  end: int
  clip: np.ndarray  # (window,) int16


@dataclasses.dataclass
class _End:
  num_samples: int
  spectrogram: Overview | None = None


def _windows(
  chunks: Iterable[np.ndarray], window: int, hop: int, spectrogram: bool = False
) -> Iterator[_Window | _End]:
  """`window_starts` over a stream of chunks, holding only the samples from the last window on;
  with `spectrogram`, the end marker carries the stream's `Overview`."""
  overview = OverviewBuilder() if spectrogram else None
  if overview is not None:
    chunks = overview.feed(chunks)
  buffer = np.zeros(0, np.int16)
  offset = 0  # file position of buffer[0]
  next_start, last_start = 0, None
  for chunk in chunks:
    buffer = np.concatenate([buffer, chunk])
    while next_start + window <= offset + buffer.size:
      begin = next_start - offset
      yield _Window(next_start, next_start + window, buffer[begin : begin + window].copy())
      last_start, next_start = next_start, next_start + hop
    # Keep from the last window's start: a closing window ends at the file's end, after it.
    keep_from = (last_start if last_start is not None else 0) - offset
    buffer, offset = buffer[keep_from:], offset + keep_from
  total = offset + buffer.size
  if total == 0:
    return
  if last_start is None:  # no longer than one window: tiled, as the original does
    yield _Window(0, total, audio.to_clip(buffer, window))
  elif window_starts(total, window, hop)[-1] > last_start:
    yield _Window(total - window, total, buffer[total - window - offset :].copy())
  yield _End(total, overview.finish() if overview is not None else None)


def _head(items: Iterator, limit: int) -> list:
  """The next `limit` items, or up to and including the end marker."""
  out = []
  for item in items:
    out.append(item)
    if isinstance(item, _End) or len(out) >= limit:
      break
  return out


class Tagger:
  """A model that tags audio files and waveforms of any length (see the module doc).

  Args:
    model: a model directory (`vggsound-convert`, training) or an exported one (`vggsound-export`).
    backend: 'auto' (the fastest available on this machine), or one by name (`backends.BACKENDS`).
    batch_size: windows per forward pass.
    window, hop: seconds; hop defaults to window.
    precision: 'fp32' or 'bf16' (the fast path on a CPU with bf16 arithmetic); default: the model's
      (or the export's). Where the CPU has no bf16 arithmetic, bf16 runs fp32, said in one line.
    decode_threads: files decoded in parallel.
    spectrogram: keep each recording's coarse spectrogram in its Tags, for `Tags.plot`.
  """

  def __init__(
    self,
    model: str | os.PathLike,
    *,
    backend: str = "auto",
    batch_size: int = 8,
    window: float = audio.CLIP_SECONDS,
    hop: float | None = None,
    precision: str | None = None,
    decode_threads: int | None = None,
    spectrogram: bool = False,
  ) -> None:
    from vggsound_jax.serving import backends  # the backends are heavy: load on use

    hop = window if hop is None else hop
    if not window >= MIN_WINDOW_SECONDS:
      raise ValueError(f"window of {window} s: windows of at least {MIN_WINDOW_SECONDS} s are classified")
    if not hop > 0:
      raise ValueError(f"hop of {hop} s: the hop must be positive")
    if batch_size < 1:
      raise ValueError(f"batch_size {batch_size}: at least 1")
    self.window, self.hop = round(window * audio.SAMPLE_RATE), round(hop * audio.SAMPLE_RATE)
    self.decode_threads = decode_threads or min(8, os.cpu_count() or 1)
    self.classifier, self.metadata = backends.load_classifier(
      model, backend=backend, batch_size=batch_size, num_samples=self.window, precision=precision
    )
    self.class_names: list[str] = list(self.metadata.get("class_names") or [])
    self.batch_size = batch_size
    self.spectrogram = spectrogram

  @property
  def backend(self) -> str:
    """The backend in use ('jax', 'openvino')."""
    return self.classifier.backend

  @property
  def embedding_dim(self) -> int | None:
    return getattr(self.classifier, "embedding_dim", None)

  def tag(self, source: str | os.PathLike | np.ndarray, sample_rate: int | None = None) -> Tags:
    """Tags one file, or one waveform ((T,) or (T, channels); `sample_rate` required).

    Raises audio.AudioDecodeError for a file that cannot be decoded, ValueError for a bad
    waveform, NonFiniteOutputError if the model's outputs are not finite.
    """
    if isinstance(source, np.ndarray):
      if sample_rate is None:
        raise ValueError("a waveform needs its sample_rate")
      samples = audio.convert_waveform(source, sample_rate)
      if samples.size == 0:
        raise ValueError("empty waveform")
      jobs = [(IN_MEMORY, lambda: _windows([samples], self.window, self.hop, self.spectrogram))]
    else:
      if sample_rate is not None:
        raise ValueError("sample_rate is for waveforms; a file's own rate is read from it")
      jobs = [(os.fspath(source), self._file_windows(source))]
    (result,) = self._run(jobs)
    if isinstance(result, Exception):
      raise result
    return result

  def tag_files(self, paths: Iterable[str | os.PathLike], *, errors: str = "raise") -> Iterator[Tags | PathError]:
    """Tags files in order, decoding ahead and batching windows across files.

    With errors='return', a file that cannot be tagged yields its PathError (AudioDecodeError,
    NonFiniteOutputError) in its place, and the others go on; with 'raise' the first one is raised.
    """
    if errors not in ("raise", "return"):
      raise ValueError(f"errors={errors!r}: 'raise' or 'return'")
    jobs = ((os.fspath(p), self._file_windows(p)) for p in paths)
    for result in self._run(jobs):
      if isinstance(result, Exception) and errors == "raise":
        raise result
      yield result

  def _file_windows(self, path: str | os.PathLike) -> Callable[[], Iterator[_Window | _End]]:
    return lambda: _windows(audio.stream_audio(path), self.window, self.hop, self.spectrogram)

  def _run(self, jobs: Iterable[tuple[str, Callable[[], Iterator]]]) -> Iterator[Tags | PathError]:
    """Windows of every job through the model; one result per job, in order."""
    pending: dict[int, dict[str, Any]] = {}  # job index -> its windows' results so far
    batch: list[tuple[int, _Window]] = []
    next_out = 0

    def flush() -> None:
      if not batch:
        return
      probs, embeddings = self.classifier(np.stack([w.clip for _, w in batch]))
      for (i, w), p, e in zip(batch, probs, embeddings):
        pending[i]["windows"].append((w.start, w.end, p, e))
      batch.clear()

    def finished() -> Iterator[Tags | PathError]:
      nonlocal next_out
      while next_out in pending and pending[next_out]["done"] and not any(i == next_out for i, _ in batch):
        yield self._result(pending.pop(next_out))
        next_out += 1

    for i, source, item in self._decoded(jobs):
      state = pending.setdefault(i, {"source": source, "windows": [], "done": False, "error": None})
      if isinstance(item, _Window):
        batch.append((i, item))
        if len(batch) == self.classifier.batch_size:
          flush()
      else:
        state["done"] = True
        if isinstance(item, _End):
          state["num_samples"], state["spectrogram"] = item.num_samples, item.spectrogram
        else:
          state["error"] = item
          batch[:] = [(j, w) for j, w in batch if j != i]
      yield from finished()
    flush()
    yield from finished()

  def _result(self, state: dict[str, Any]) -> Tags | PathError:
    if state["error"] is not None:
      return state["error"]
    starts, ends, probs, embeddings = zip(*state["windows"])
    probs, embeddings = np.stack(probs), np.stack(embeddings)
    if not (np.isfinite(probs).all() and np.isfinite(embeddings).all()):
      return NonFiniteOutputError(state["source"], "the model's outputs are not finite (NaN or inf)")
    rate = float(audio.SAMPLE_RATE)
    return Tags(
      source=state["source"],
      duration=state["num_samples"] / rate,
      starts=np.asarray(starts) / rate,
      ends=np.asarray(ends) / rate,
      window_probs=probs,
      window_embeddings=embeddings,
      class_names=self.class_names,
      spectrogram=state["spectrogram"],
    )

  def _decoded(
    self, jobs: Iterable[tuple[str, Callable[[], Iterator]]]
  ) -> Iterator[tuple[int, str, _Window | _End | PathError]]:
    """(job index, source, window or end or error), job after job.

    Up to `decode_threads` jobs are opened ahead in threads (PyAV and libsndfile release the
    GIL), each decoding its first windows; a long job's later windows are read one slice ahead
    while the model runs, so at most a few windows of it are in memory.
    """
    jobs = enumerate(jobs)
    with concurrent.futures.ThreadPoolExecutor(self.decode_threads) as pool, contextlib.ExitStack() as stack:

      def submit(job: tuple[int, tuple[str, Callable]]) -> tuple:
        i, (source, make) = job
        items = make()
        return i, source, items, pool.submit(_head, items, _WINDOWS_AHEAD)

      ahead = collections.deque(submit(job) for job in itertools.islice(jobs, self.decode_threads))
      # A caller that stops early (Ctrl-C, a break) should not wait for files it will never see.
      stack.callback(pool.shutdown, cancel_futures=True)
      while ahead:
        i, source, items, head = ahead.popleft()
        ahead.extend(submit(job) for job in itertools.islice(jobs, 1))
        try:
          while True:
            got = head.result()
            if not got:  # ended without a window
              raise audio.AudioDecodeError(source, "no audio samples")
            done = isinstance(got[-1], _End)
            if not done:
              head = pool.submit(_head, items, _WINDOWS_AHEAD)
            for item in got:
              yield i, source, item
            if done:
              break
        except PathError as e:
          yield i, source, e
        except Exception as e:  # noqa: BLE001 - one bad file must not end the run; it is reported
          yield i, source, audio.AudioDecodeError(source, f"cannot decode: {type(e).__name__}: {e}")
