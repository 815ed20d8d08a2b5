"""The project's pictures: a recording's timeline, per-class AP, the most confused classes, and
the accuracy of cross-validation folds (docs/plots.md shows each).

Every `*_figure` function builds a matplotlib `Figure` with the object API (no pyplot state, no
display: the Agg canvas), so that tests can read its texts; every `plot_*` writes one as a PNG of
exactly the figure's size, atomically (a hidden sibling, renamed into place), and returns the
path. matplotlib is imported on first use only: commands that do not plot never load it. Sizes
are bounded whatever the data: the timeline draws from per-window results and the recording's
coarse spectrogram (`audio/overview.py`), never from its samples.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vggsound_jax.errors import PathError

if TYPE_CHECKING:
  from matplotlib.figure import Figure

  from vggsound_jax.serving.tagger import Tags

DPI = 100
SOFTWARE = "vggsound-jax"  # the PNG's Software text: how a picture this project wrote is recognised
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FONT_SIZE = 9
MAX_LABEL_CHARS = 40  # VGGSound's longest class name has 39
# Timeline.
TIMELINE_WIDTH = 12.0  # inches
DEFAULT_TOP_K = 10
MAX_TIMELINE_CLASSES = 40  # rows of the heat map: beyond this the picture is taller than a screen
MAX_HEAT_COLUMNS = 1200  # about the heat map's width in pixels: more windows are max-pooled
SPECTROGRAM_HEIGHT = 2.6  # inches
ROW_HEIGHT = 0.3  # inches per class row (heat map) or bar (bar charts)
DYNAMIC_RANGE_DB = 80.0  # the spectrogram's colours span this far below its loudest
TIME_STEPS = (
  0.01,
  0.02,
  0.05,
  0.1,
  0.2,
  0.5,
  1,
  2,
  5,
  10,
  15,
  30,
  60,
  120,
  300,
  600,
  900,
  1800,
  3600,
  7200,
  10800,
  21600,
  43200,
)
MAX_TIME_TICKS = 12
MIN_COLOUR_SCALE = 0.1  # the heat map's colours reach at least this probability
# Evaluation.
INSIDE_LABEL_MIN = 0.15  # a bar at least this long has its value written inside its end
NAMED_CLASSES = 15  # the best and the worst classes named in the per-class AP picture
CONFUSED_PAIRS = 20  # pairs of classes in the confusion picture


def _figure(width: float, height: float) -> Figure:
  from matplotlib.figure import Figure  # matplotlib loads in ~0.3 s: only when plotting

  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  return fig


def _plain(text: str) -> str:
  """Text drawn as it is: '$' would start TeX-like math, and names that are not UTF-8 (surrogate
  escapes) cannot be rendered, so they show as backslash escapes."""
  return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")


def _name(name: str) -> str:
  """A class or fold name as a label: cut to MAX_LABEL_CHARS, so that one long name cannot
  squeeze the plot beside it."""
  name = str(name)
  if len(name) > MAX_LABEL_CHARS:
    name = name[: MAX_LABEL_CHARS - 1].rstrip() + "\u2026"
  return _plain(name)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
  """Writes `fig` as a PNG at `path` (a temporary sibling first, then renamed); returns the path.
  PathError, one line, if it cannot be written."""
  path = Path(path)
  # Created like any new file (mode 0o666 less the umask), not tempfile's private 0o600.
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
      fig.savefig(f, format="png", dpi=DPI, metadata={"Software": SOFTWARE})
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise PathError(path, f"cannot write the picture ({e.strerror or e})") from None
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def written_by_us(path: str | os.PathLike) -> bool:
  """Whether `path` is a PNG this project wrote (its Software text), hence one it may replace."""
  try:
    with open(path, "rb") as f:
      head = f.read(4096)
  except OSError:
    return False
  return head.startswith(PNG_SIGNATURE) and b"Software\0" + SOFTWARE.encode() in head


def timeline_paths(directory: str | os.PathLike, sources: Sequence[str]) -> list[Path]:
  """Where `vggsound-predict --plot DIRECTORY` puts each source's timeline: DIRECTORY/NAME.png
  (NAME with its extension, so a.wav and a.flac differ; a name seen before in the same run gets
  -2, -3, ...). Checked before any work: the directory is created if missing, and a file there
  is replaced only if this project wrote it; otherwise a PathError, one line."""
  directory = Path(os.path.abspath(directory))
  if directory.exists() and not directory.is_dir():
    raise PathError(directory, "is not a directory (--plot takes a folder for the pictures)")
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PathError(directory, f"cannot create the directory ({e.strerror or e})") from None
  paths, seen = [], set()
  for source in sources:
    name = Path(source).name or "recording"
    path, n = directory / f"{name}.png", 1
    while path.name in seen:
      n += 1
      path = directory / f"{name}-{n}.png"
    seen.add(path.name)
    if path.is_symlink() or path.is_dir() or (path.exists() and not written_by_us(path)):
      raise PathError(path, "exists and is not a picture written by vggsound-jax (refusing to replace it)")
    paths.append(path)
  return paths


# ----------------------------------------------------------------------------- time axis


def clock(seconds: float, hours: bool = False, decimals: int = 0) -> str:
  """'m:ss' (or 'h:mm:ss'), with `decimals` digits of the second."""
  seconds = round(float(seconds), decimals)
  minutes, secs = divmod(seconds, 60)
  width = 2 + (decimals + 1 if decimals else 0)
  text = f"{secs:0{width}.{decimals}f}"
  if hours:
    h, minutes = divmod(int(minutes), 60)
    return f"{h}:{minutes:02d}:{text}"
  return f"{int(minutes)}:{text}"


def time_step(duration: float) -> float:
  """The smallest of TIME_STEPS that puts at most MAX_TIME_TICKS ticks on [0, duration]."""
  for step in TIME_STEPS:
    if duration / step <= MAX_TIME_TICKS:
      return step
  return duration / MAX_TIME_TICKS


def _time_axis(ax, duration: float) -> None:  # noqa: ANN001 - a matplotlib Axes
  from matplotlib.ticker import FuncFormatter, MultipleLocator

  step = time_step(duration)
  hours = duration >= 3600
  decimals = 0 if step >= 1 else 1 if step >= 0.1 else 2
  ax.xaxis.set_major_locator(MultipleLocator(step))
  ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: clock(x, hours, decimals)))
  ax.set_xlim(0, duration)
  ax.set_xlabel("time (h:mm:ss)" if hours else "time (m:ss)")


# ----------------------------------------------------------------------------- timeline


def heat_columns(
  starts: np.ndarray, ends: np.ndarray, duration: float, values: np.ndarray, max_columns: int = MAX_HEAT_COLUMNS
) -> tuple[np.ndarray, np.ndarray]:
  """(edges (M + 1,), values (M, k)): each window drawn from the midpoint with the window before
  to the midpoint with the next (the first from 0, the last to `duration`), so overlapping
  windows do not hide one another and one window fills the whole recording. More than
  `max_columns` windows are pooled in runs of neighbours by their maximum, so that a brief
  sound stays visible however long the recording."""
  centres = (np.asarray(starts, np.float64) + np.asarray(ends, np.float64)) / 2
  edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [max(duration, float(ends[-1]))]])
  if len(centres) <= max_columns:
    return edges, values
  firsts = np.linspace(0, len(centres), max_columns + 1).astype(int)
  return edges[firsts], np.maximum.reduceat(values, firsts[:-1], axis=0)


def _source_name(tags: Tags) -> str:
  return Path(tags.source).name or tags.source


def _window_text(tags: Tags) -> str:
  windows = len(tags.starts)
  if windows == 1:
    return "one window"
  text = f"{windows} windows of {float(tags.ends[0] - tags.starts[0]):g} s"
  if windows > 2:  # the second of two may be the one that closes the recording, at any offset
    text += f" every {float(tags.starts[1] - tags.starts[0]):g} s"
  return text


def timeline_figure(tags: Tags, k: int = DEFAULT_TOP_K) -> Figure:
  """The recording's spectrogram (when its Tags keep one) above a heat map of the probabilities
  over time of the k classes (at most MAX_TIMELINE_CLASSES) whose maximum over windows is
  highest, best at the top."""
  import matplotlib

  names = list(tags.class_names) or [f"class {i}" for i in range(tags.window_probs.shape[1])]
  k = max(1, min(k, len(names), MAX_TIMELINE_CLASSES))
  top = np.argsort(-tags.max_probs, kind="stable")[:k]
  edges, values = heat_columns(tags.starts, tags.ends, tags.duration, tags.window_probs[:, top])
  duration = float(edges[-1])
  heat_height = ROW_HEIGHT * k + 0.9
  spectrogram = tags.spectrogram
  height = heat_height + (SPECTROGRAM_HEIGHT if spectrogram is not None else 0) + 0.7
  fig = _figure(TIMELINE_WIDTH, height)
  if spectrogram is not None:
    spec_ax, heat_ax = fig.subplots(2, 1, sharex=True, height_ratios=[SPECTROGRAM_HEIGHT, heat_height])
    power = spectrogram.power_db
    top_db = float(np.nanmax(power)) if np.isfinite(power).any() else 0.0
    image = spec_ax.imshow(
      power,
      origin="lower",
      aspect="auto",
      interpolation="antialiased",
      extent=(0, spectrogram.seconds, 0, spectrogram.max_hz / 1000),
      cmap=matplotlib.colormaps["magma"].with_extremes(bad="0.85"),
      vmin=top_db - DYNAMIC_RANGE_DB,
      vmax=top_db,
    )
    spec_ax.set_ylabel("frequency (kHz)", fontsize=FONT_SIZE)
    spec_ax.set_title("spectrogram (the model's frames)", fontsize=FONT_SIZE, loc="left")
    fig.colorbar(image, ax=spec_ax, pad=0.01, aspect=12).set_label("power (dB)", fontsize=FONT_SIZE)
  else:
    heat_ax = fig.subplots()
  # Colours span 0 to the highest probability shown: a model that is never sure still shows when
  # each class rises. The colour bar and the maxima after the names give the scale.
  vmax = max(float(values.max()), MIN_COLOUR_SCALE)
  mesh = heat_ax.pcolormesh(edges, np.arange(k + 1), values.T, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
  heat_ax.hlines(np.arange(1, k), 0, duration, colors="white", linewidth=0.6)
  heat_ax.set_ylim(k, 0)
  heat_ax.set_yticks(np.arange(k) + 0.5)
  heat_ax.set_yticklabels([f"{_name(names[i])}  {tags.max_probs[i]:.2f}" for i in top], fontsize=FONT_SIZE)
  heat_ax.tick_params(axis="y", length=0)
  pooled = len(edges) - 1 < len(tags.starts)
  heat_ax.set_title(
    f"top {k} classes by their highest probability in any window (after each name)"
    + ("; each column is the maximum of a run of windows" if pooled else ""),
    fontsize=FONT_SIZE,
    loc="left",
  )
  fig.colorbar(mesh, ax=heat_ax, pad=0.01, aspect=max(4, 2 * k)).set_label("probability", fontsize=FONT_SIZE)
  _time_axis(heat_ax, duration)
  decimals = 2 if tags.duration < 1 else 1 if tags.duration < 60 else 0
  length = clock(tags.duration, tags.duration >= 3600, decimals)
  fig.suptitle(f"{_plain(_source_name(tags))}: {length}, {_window_text(tags)}")
  return fig


def plot_timeline(tags: Tags, path: str | os.PathLike, k: int = DEFAULT_TOP_K) -> Path:
  """Writes `timeline_figure(tags, k)` as a PNG at `path`."""
  return save_figure(timeline_figure(tags, k), path)


# ----------------------------------------------------------------------------- evaluation


def _named_bars(ax, names: Sequence[str], values: np.ndarray, reference: float, color: str, title: str) -> None:  # noqa: ANN001
  """Horizontal bars, first at the top, each named and with its value written beside it."""
  y = np.arange(len(values))
  ax.barh(y, values, color=color, height=0.75)
  ax.axvline(reference, color="tab:red", linestyle="--", linewidth=1, zorder=0.5)  # behind bars and values
  ax.set_yticks(y)
  ax.set_yticklabels([_name(n) for n in names], fontsize=FONT_SIZE)
  ax.set_ylim(len(values) - 0.5, -0.5)
  ax.set_xlim(0, 1.0)
  ax.tick_params(axis="y", length=0)
  for yi, v in zip(y, values):  # inside the bar's end, clear of the reference line; outside a short bar
    inside = v >= INSIDE_LABEL_MIN
    x, align, colour = (v - 0.01, "right", "white") if inside else (v + 0.01, "left", "black")
    ax.text(x, yi, f"{v:.3f}", va="center", ha=align, color=colour, fontsize=FONT_SIZE - 1)
  ax.set_title(title, fontsize=FONT_SIZE + 1, loc="left")


def per_class_ap_figure(class_names: Sequence[str], ap: np.ndarray, m_ap: float, named: int = NAMED_CLASSES) -> Figure:
  """Per-class AP, best first: every class named when there are few (2 x `named` at most);
  otherwise all classes by rank above the `named` best and the `named` worst, by name.
  Classes without a positive clip (AP NaN) are left out and counted in the title."""
  ap = np.asarray(ap, np.float64)
  kept = np.flatnonzero(np.isfinite(ap))
  order = kept[np.argsort(-ap[kept], kind="stable")]
  n = len(order)
  left_out = len(ap) - n
  title = f"Per-class AP: {n} classes, mAP {m_ap:.3f} (dashed)"
  if left_out:
    title += f"; {left_out} without a positive clip left out"
  if n <= 2 * named:
    fig = _figure(8.0, 1.3 + ROW_HEIGHT * max(n, 1))
    ax = fig.subplots()
    _named_bars(ax, [class_names[i] for i in order], ap[order], m_ap, "tab:blue", "all classes, best first")
    ax.set_xlabel("average precision")
    if not n:
      ax.text(0.5, 0.5, "no class has a positive clip", ha="center", va="center", transform=ax.transAxes)
  else:
    fig = _figure(12.0, 4.0 + ROW_HEIGHT * named)
    axes = fig.subplot_mosaic([["rank", "rank"], ["best", "worst"]], height_ratios=[2.4, ROW_HEIGHT * named + 0.6])
    colors = np.full(n, "tab:blue", dtype=object)
    colors[:named], colors[-named:] = "tab:green", "tab:orange"
    rank = axes["rank"]
    rank.bar(np.arange(n), ap[order], width=1.0, color=list(colors))
    rank.axhline(m_ap, color="tab:red", linestyle="--", linewidth=1, label=f"mAP {m_ap:.3f}")
    rank.legend(loc="lower left", fontsize=FONT_SIZE)
    rank.set_xlim(-0.5, n - 0.5)
    rank.set_ylim(0, 1.02)
    rank.set_xlabel("class rank (the named best in green, the named worst in orange)")
    rank.set_ylabel("average precision")
    best, worst = order[:named], order[-named:]
    _named_bars(axes["best"], [class_names[i] for i in best], ap[best], m_ap, "tab:green", f"best {named}")
    _named_bars(axes["worst"], [class_names[i] for i in worst], ap[worst], m_ap, "tab:orange", f"worst {named}")
  fig.suptitle(title)
  return fig


def plot_per_class_ap(path: str | os.PathLike, class_names: Sequence[str], ap: np.ndarray, m_ap: float) -> Path:
  """Writes `per_class_ap_figure` as a PNG at `path`."""
  return save_figure(per_class_ap_figure(class_names, ap, m_ap), path)


def confusions_figure(confusions: np.ndarray, class_names: Sequence[str], n: int = CONFUSED_PAIRS) -> Figure:
  """The n most frequent mistakes of a `metrics.top1_confusions` matrix as bars, 'true ->
  predicted', each with its count and its share of the true class's clips."""
  from vggsound_jax.metrics import most_confused  # sklearn, scipy: only here

  pairs = most_confused(confusions, n)
  clips = confusions.sum(axis=1)
  mistakes = int(confusions.sum() - np.trace(confusions))
  fig = _figure(10.0, 1.3 + ROW_HEIGHT * max(len(pairs), 1))
  ax = fig.subplots()
  y = np.arange(len(pairs))
  counts = np.asarray([c for _, _, c in pairs])
  ax.barh(y, counts, color="tab:purple", height=0.75)
  ax.set_yticks(y)
  ax.set_yticklabels([f"{_name(class_names[t])} \u2192 {_name(class_names[p])}" for t, p, _ in pairs])
  ax.tick_params(axis="y", length=0, labelsize=FONT_SIZE)
  ax.set_ylim(max(len(pairs), 1) - 0.5, -0.5)
  top = int(counts.max()) if len(pairs) else 1
  ax.set_xlim(0, top * 1.3)  # room for the text after the longest bar
  for yi, (t, _, c) in zip(y, pairs):
    ax.text(c + top * 0.01, yi, f"{c} ({c / clips[t]:.0%})", va="center", fontsize=FONT_SIZE - 1)
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.set_xlabel("clips of the first class whose top-1 prediction is the second (and their share of its clips)")
  if not pairs:
    ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
  shown = f"the {len(pairs)} most frequent" if len(pairs) < len(most_confused(confusions)) else "all"
  fig.suptitle(f"Most confused classes (true \u2192 top-1 prediction): {shown} of {mistakes} mistakes")
  return fig


def plot_confusions(path: str | os.PathLike, confusions: np.ndarray, class_names: Sequence[str]) -> Path:
  """Writes `confusions_figure` as a PNG at `path`."""
  return save_figure(confusions_figure(confusions, class_names), path)


def cross_validation_figure(folds: Sequence[str], accuracy: Sequence[float]) -> Figure:
  """Accuracy per fold as labelled bars, with their mean (line) and +- one standard deviation
  (band; numpy's, over the folds, ddof=0)."""
  accuracy = np.asarray(accuracy, np.float64)
  if len(folds) != len(accuracy) or not len(folds):
    raise ValueError(f"{len(folds)} folds and {len(accuracy)} accuracies: one accuracy per fold, at least one")
  if not np.isfinite(accuracy).all():
    raise ValueError(f"accuracies must be finite, got {accuracy.tolist()}")
  mean, std = float(accuracy.mean()), float(accuracy.std())
  fig = _figure(max(5.0, 1.5 + 0.7 * len(folds)), 4.0)
  ax = fig.subplots()
  x = np.arange(len(folds))
  ax.bar(x, accuracy, color="tab:blue", width=0.7)
  for xi, a in zip(x, accuracy):  # inside the bar's top
    inside = a >= INSIDE_LABEL_MIN
    ax.text(
      xi,
      a - 0.02 if inside else a + 0.02,
      f"{a:.3f}",
      ha="center",
      va="top" if inside else "bottom",
      color="white" if inside else "black",
      fontsize=FONT_SIZE - 1,
    )
  # Behind the bars, so that the values written in them stay clear.
  ax.axhspan(mean - std, mean + std, color="tab:red", alpha=0.15, label=f"\u00b1 std {std:.3f}", zorder=0.4)
  ax.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {mean:.3f}", zorder=0.5)
  ax.set_xticks(x)
  long_names = len(folds) > 6 or max(len(str(f)) for f in folds) > 8
  ax.set_xticklabels(
    [_name(f) for f in folds], rotation=30 if long_names else 0, ha="right" if long_names else "center"
  )
  ax.set_ylim(0, 1.0)
  ax.set_ylabel("accuracy")
  ax.set_xlabel("fold")
  fig.legend(loc="outside lower center", ncols=2, fontsize=FONT_SIZE)
  fig.suptitle(f"Cross-validation: {len(folds)} folds, accuracy {mean:.3f} \u00b1 {std:.3f}")
  return fig


def plot_cross_validation(folds: Sequence[str], accuracy: Sequence[float], path: str | os.PathLike) -> Path:
  """Writes `cross_validation_figure(folds, accuracy)` as a PNG at `path`; returns the path."""
  return save_figure(cross_validation_figure(folds, accuracy), path)
