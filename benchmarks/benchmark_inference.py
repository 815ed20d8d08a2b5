"""CPU inference benchmarks, side by side with the PyTorch original, in one run.

  python benchmarks/benchmark_inference.py            # the full table (about 10 minutes on 2 cores)
  python benchmarks/benchmark_inference.py --smoke    # tiny shapes, just shows that it runs

Prints: model-only clips/s (JAX fp32 and bf16, the exported ONNX graph (front end included) in
ONNX Runtime fp32 and in OpenVINO fp32 and bf16, PyTorch eager fp32 NCHW, channels_last fp32 under
torch.compile, channels_last + bf16 autocast; each with its top-1 agreement with an fp32 run), the
front end (jnp under jit vs scipy per clip), whole-process predict on wav files (scripts/predict.py:
auto backend fp32, --precision bf16, an export made with --precision bf16, --backend jax; vs the
original's way: scipy front end + eager PyTorch, batch 32; with top-1 agreement and the largest
probability difference from the original's), and the start-up of a process (imports, model load,
first call, teardown). The header names the CPU and whether it has bf16 arithmetic. Implementations are timed
round-robin, one call (or process) of each per round, medians of the rounds: these machines are
noisy, and ratios mean something only within one run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from benchmark_utils import REPO, machine, print_table, seconds_per_call

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model, 1 s clips, one repeat: shows the script runs.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "32"], "Model-only batch sizes.")
_HEADS = flags.DEFINE_list("heads", ["avgpool", "vlad"], "Heads of ResNet-18 to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per figure (median); rounds of the interleaved runs.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", True, "Also measure torch.compile.")
_PREDICT_FILES = flags.DEFINE_integer("predict_files", 64, "Wav files for whole-process predict.")
_SECTIONS = flags.DEFINE_list("sections", ["model", "frontend", "predict"], "What to measure.")

ORIGINAL_PREDICT = """
import sys, time
import numpy as np, soundfile as sf, scipy.signal, torch
from vggsound_jax.testing import torch_reference
ckpt, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
model = torch_reference.build_torch_model({depth}, {head!r}, width={width})
state = torch.load(ckpt, map_location="cpu", weights_only=False)["model_state_dict"]
torch_reference.load_release_state_dict(model, state)
model.eval()
def spectrogram(path):  # the original's front end, per clip
    samples, rate = sf.read(path, dtype="int16")
    samples = np.tile(samples, 10)[:{clip}] / 32768.0
    samples[samples > 1.] = 1.
    samples[samples < -1.] = -1.
    _, _, s = scipy.signal.spectrogram(samples, rate, nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    return (s - np.mean(s)) / (np.std(s) + 1e-9)
all_probs = []
with torch.no_grad():
    for i in range(0, len(files), 32):
        x = np.stack([spectrogram(f) for f in files[i:i + 32]])[:, None]
        probs = torch.softmax(model(torch.from_numpy(x).float()), dim=1)
        all_probs.append(probs.numpy())
        for f, p in zip(files[i:i + 32], probs.numpy()):
            print(f, int(p.argmax()), float(p.max()))
if out != "-":
    np.save(out, np.concatenate(all_probs))
"""


def cpu_features():
  """Which of the vector extensions that decide fp32 and bf16 speed this CPU has."""
  from vggsound_jax.serving.backends import BF16_CPU_FLAGS, CPUINFO

  try:
    lines = CPUINFO.read_text().splitlines()
    flags = set(next(line for line in lines if line.startswith("flags")).split())
  except (OSError, StopIteration):
    return "CPU flags unknown"
  wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
  return (
    "has "
    + (", ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512")
    + ("; no bf16 arithmetic" if not flags & set(BF16_CPU_FLAGS) else "; bf16 arithmetic")
  )


def _audio_batch(n, num_samples, seed=0):
  """Tones in noise with random pitch: spectrograms with structure, unlike white noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / 16000
  freqs = rng.uniform(100, 4000, size=(n, 1))
  x = 0.3 * np.sin(2 * np.pi * freqs * t) + rng.normal(0, 0.05, (n, num_samples))
  return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def interleaved_seconds(fns, rounds):
  """Median wall seconds per call of each of `fns` (name -> blocking callable), timed round-robin
  (one call of each per round, after one warm-up call each) so that drifts of a noisy machine
  touch every implementation alike."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def bench_model(cfg, rows):
  import jax
  import jax.numpy as jnp
  import onnx
  import onnxruntime
  import torch
  from flax import nnx

  from vggsound_jax.audio.spectrogram import log_spectrogram
  from vggsound_jax.conversion.resnet import flax_model_from_state_dict
  from vggsound_jax.serving.backends import OPENVINO_PRECISIONS, import_openvino
  from vggsound_jax.serving.graph import build_graph
  from vggsound_jax.testing import torch_reference

  core = import_openvino().Core()
  for head in _HEADS.value:
    torch_model = torch_reference.build_torch_model(18, head, width=cfg["width"])
    torch_reference.randomize_(torch_model, seed=0)
    torch_model.eval()
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    flax_fp32 = flax_model_from_state_dict(state_dict)
    flax_bf16 = flax_model_from_state_dict(state_dict, dtype="bfloat16")
    cl_model = torch_reference.build_torch_model(18, head, width=cfg["width"])
    cl_model.load_state_dict(torch_model.state_dict())
    cl_model = cl_model.eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(cl_model) if cfg["torch_compile"] else None
    for batch in cfg["batch_sizes"]:
      audio = _audio_batch(batch, cfg["clip"])
      spec = np.asarray(log_spectrogram(audio))[:, :, :, None]  # NHWC
      fns, outputs, names = {}, {}, {}
      for name, model in (("jax fp32", flax_fp32), ("jax bf16", flax_bf16)):
        model.eval()
        graphdef, state = nnx.split(model)
        fwd = jax.jit(lambda s, x, g=graphdef, d=model.config.dtype: nnx.merge(g, s)(x.astype(d)))
        x = jnp.asarray(spec)
        fns[name] = lambda f=fwd, s=state, x=x: f(s, x).block_until_ready()
        outputs[name] = lambda f=fwd, s=state, x=x: np.asarray(f(s, x))
      onnx_path = Path(cfg["tmp"]) / f"r18_{head}.onnx"
      onnx.save_model(build_graph(flax_fp32, cfg["clip"]), onnx_path)
      graph = core.read_model(onnx_path)
      graph.reshape({0: [batch, cfg["clip"]]})
      session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
      fns["onnxruntime fp32 (with front end)"] = lambda s=session: s.run(None, {"audio": audio})
      outputs["onnxruntime fp32 (with front end)"] = lambda s=session: s.run(None, {"audio": audio})[0]
      for precision in ("fp32", "bf16"):
        compiled_graph = core.compile_model(
          graph, "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        )
        request = compiled_graph.create_infer_request()
        # OpenVINO falls back to f32 where the CPU has no bf16 arithmetic (AVX-512 BF16, AMX).
        runs_as = str(compiled_graph.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")
        name = f"openvino {precision} (with front end)" + ("" if precision == "fp32" else f", runs {runs_as}")
        names[precision] = name
        fns[name] = lambda r=request: r.infer([audio])
        outputs[name] = lambda r=request: np.asarray(r.infer([audio])[0])
      nchw = torch.from_numpy(spec.transpose(0, 3, 1, 2).copy())
      cl_input = nchw.contiguous(memory_format=torch.channels_last)

      def torch_call(m, x, bf16):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
          return m(x)

      torch_runs = {"torch eager fp32": (torch_model, nchw, False), "torch cl+bf16": (cl_model, cl_input, True)}
      if compiled is not None:
        torch_runs["torch cl fp32+compile"] = (compiled, cl_input, False)
        start = time.perf_counter()
        torch_call(compiled, cl_input, False)
        print(f"torch.compile, batch {batch}: {time.perf_counter() - start:.0f} s", flush=True)
      for name, (m, x, bf16) in torch_runs.items():
        fns[name] = lambda m=m, x=x, bf16=bf16: torch_call(m, x, bf16)
        outputs[name] = lambda m=m, x=x, bf16=bf16: torch_call(m, x, bf16).float().numpy()
      seconds = interleaved_seconds(fns, cfg["rounds"])
      top1 = {name: out().argmax(1) for name, out in outputs.items()}
      fp32_of = {
        "jax bf16": "jax fp32",
        "torch cl+bf16": "torch eager fp32",
        "onnxruntime fp32 (with front end)": "jax fp32",
      }
      fp32_of[names["bf16"]] = names["fp32"]
      eager = seconds["torch eager fp32"]
      best_torch_fp32 = min(t for name, t in seconds.items() if name.startswith("torch") and "bf16" not in name)
      for name, t in seconds.items():
        agreement = f"{np.mean(top1[name] == top1[fp32_of[name]]):.3f}" if name in fp32_of else ""
        rows.append([f"r18 {head}", batch, name, batch / t, eager / t, best_torch_fp32 / t, agreement])


def bench_frontend(cfg, rows):
  import jax
  import scipy.signal

  from vggsound_jax.audio.spectrogram import log_spectrogram

  batch = cfg["frontend_batch"]
  audio = _audio_batch(batch, cfg["clip"])
  fn = jax.jit(log_spectrogram)
  jnp_s = seconds_per_call(lambda: fn(audio).block_until_ready(), repeats=cfg["repeats"])

  def scipy_per_clip():
    for clip in audio:
      x = np.clip(clip / 32768.0, -1, 1)
      _, _, s = scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353)
      s = np.log(s + 1e-7)
      (s - s.mean()) / (s.std() + 1e-9)

  scipy_s = seconds_per_call(scipy_per_clip, repeats=cfg["repeats"])
  rows.append(["jnp log_spectrogram (jit, batched)", batch, batch / jnp_s, scipy_s / jnp_s])
  rows.append(["scipy per clip (original)", batch, batch / scipy_s, 1.0])


STARTUP = """
import sys, time
start = time.time()
import numpy as np
from vggsound_jax.serving import backends
if sys.argv[2] == "jax":  # as vggsound-predict does
    from vggsound_jax.compilation_cache import enable_compilation_cache
    enable_compilation_cache()
imported = time.time()
classifier, _ = backends.load_classifier(sys.argv[1], backend=sys.argv[2], batch_size=8)
loaded = time.time()
classifier(np.zeros((8, classifier.num_samples), np.int16))
first = time.time()
classifier(np.zeros((8, classifier.num_samples), np.int16))
second = time.time()
print(start, imported, loaded, first, second, time.time(), classifier.backend)
"""


def bench_predict(cfg, rows, startup_rows):
  import os

  import soundfile as sf
  import torch

  from vggsound_jax.testing import torch_reference

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    audio = _audio_batch(cfg["predict_files"], cfg["clip"])
    files = []
    for i, clip in enumerate(audio):
      files.append(str(tmp / f"clip{i:03d}.wav"))
      sf.write(files[-1], clip, 16000, subtype="PCM_16")
    model = torch_reference.build_torch_model(18, "avgpool", width=cfg["width"])
    torch_reference.randomize_(model, seed=0)
    ckpt = tmp / "vggsound_avgpool.pth.tar"
    torch_reference.save_release_style(model, ckpt, legacy=True)
    converted = tmp / "converted"
    convert = [sys.executable, str(REPO / "converters/pytorch_to_flax.py"), "--input", str(ckpt), "--output"]
    subprocess.run(convert + [str(converted)], check=True, capture_output=True)
    script = tmp / "original_predict.py"
    script.write_text(
      textwrap.dedent(ORIGINAL_PREDICT.format(depth=18, head="avgpool", width=cfg["width"], clip=cfg["clip"]))
    )
    del torch
    # Fresh caches: the first runs below export (auto) and compile (jax); the others find them.
    env = dict(os.environ, VGGSOUND_JAX_CACHE=str(tmp / "cache"))

    def run(cmd):
      start = time.perf_counter()
      result = subprocess.run(cmd, capture_output=True, env=env, text=True, encoding="utf-8")
      if result.returncode:
        raise RuntimeError(f"{cmd[:3]}... failed: {result.stderr[-2000:]}")
      return time.perf_counter() - start

    bf16_export = tmp / "bf16.export"
    export = [sys.executable, str(REPO / "scripts/export.py"), "--checkpoint", str(converted), "--precision", "bf16"]
    # 10 s clips, as vggsound-predict's default window (shorter files are tiled to it).
    subprocess.run(export + ["--output", str(bf16_export)], check=True, env=env, capture_output=True)
    predict = [sys.executable, str(REPO / "scripts/predict.py"), "--top_k", "1"]
    on_model = predict + ["--checkpoint", str(converted)]
    original = "original way (scipy + eager PyTorch, batch 32)"
    ways = {
      original: [sys.executable, str(script), str(ckpt), "-"] + files,
      "vggsound-predict (auto: OpenVINO fp32, batch 8)": on_model + ["--backend", "auto"] + files,
      "vggsound-predict --precision bf16 (auto, batch 8)": on_model + ["--precision", "bf16"] + files,
      "vggsound-predict on a `vggsound-export --precision bf16` directory": predict
      + ["--checkpoint", str(bf16_export)]
      + files,
      "vggsound-predict --backend jax (batch 8)": on_model + ["--backend", "jax"] + files,
    }
    # The first run of each (empty caches: the auto backend exports, JAX compiles) also keeps its
    # probabilities, for the agreement with the original's.
    first, probs = {}, {}
    for i, (name, cmd) in enumerate(ways.items()):
      out = tmp / f"probs{i}.npy" if name == original else tmp / f"probs{i}.npz"
      cmd = cmd[:3] + [str(out)] + cmd[4:] if name == original else cmd[: -len(files)] + ["--output", str(out)] + files
      first[name] = run(cmd)
      probs[name] = np.load(out) if name == original else np.load(out)["probs"]
    times = {name: [] for name in ways}
    for _ in range(cfg["rounds"]):
      for name, cmd in ways.items():
        times[name].append(run(cmd))
    n = len(files)
    base = statistics.median(times[original])
    want = probs[original]
    for name, t in times.items():
      agreement = f"{int(np.sum(probs[name].argmax(1) == want.argmax(1)))} of {n}"
      diff = f"{np.abs(probs[name] - want).max():.1e}"
      rows.append([name, n, statistics.median(t), base / statistics.median(t), agreement, diff])
    for name, t in first.items():
      if name != original:
        rows.append([f"{name}, first run (exports or compiles)", n, t, base / t, "", ""])

    startup = tmp / "startup.py"
    # 10 s windows, as vggsound-predict's default: the auto backend finds the export it made.
    startup.write_text(textwrap.dedent(STARTUP))
    for backend in ("auto", "jax"):
      begin = time.time()
      out = subprocess.run(
        [sys.executable, str(startup), str(converted), backend],
        capture_output=True,
        env=env,
        text=True,
        encoding="utf-8",
        check=True,
      )
      end = time.time()
      start, imported, loaded, first_call, second, done, used = out.stdout.split()
      start, imported, loaded, first_call, second, done = map(
        float, (start, imported, loaded, first_call, second, done)
      )
      startup_rows.append(
        [
          f"{backend} ({used})",
          start - begin,
          imported - start,
          loaded - imported,
          first_call - loaded,
          second - first_call,
          end - done,
          end - begin,
        ]
      )


def main(argv):
  del argv
  cfg = {
    "width": 64,
    "clip": 160000,
    "repeats": _REPEATS.value,
    "rounds": _REPEATS.value,
    "batch_sizes": [int(b) for b in _BATCH_SIZES.value],
    "torch_compile": _TORCH_COMPILE.value,
    "predict_files": _PREDICT_FILES.value,
    "frontend_batch": 32,
  }
  scratch = tempfile.TemporaryDirectory()  # removed at exit
  cfg["tmp"] = scratch.name
  if _SMOKE.value:
    cfg.update(
      width=4, clip=16000, repeats=1, rounds=1, batch_sizes=[2], torch_compile=False, predict_files=4, frontend_batch=4
    )
  clip = f"{cfg['clip'] / 16000:g} s clips"
  print(f"# CPU inference benchmark\n\n{machine()}; {cpu_features()}")
  if "model" in _SECTIONS.value:
    rows = []
    bench_model(cfg, rows)
    print_table(
      f"Model only, ResNet-18 width {cfg['width']}, {clip}, medians of {cfg['rounds']} interleaved rounds "
      "(ratios: higher is faster)",
      [
        "model",
        "batch",
        "implementation",
        "clips/s",
        "x eager fp32",
        "x fastest PyTorch fp32",
        "top-1 agreement with fp32",
      ],
      rows,
    )
  if "frontend" in _SECTIONS.value:
    rows = []
    bench_frontend(cfg, rows)
    print_table(f"Front end, {clip}", ["implementation", "clips", "clips/s", "x scipy"], rows)
  if "predict" in _SECTIONS.value:
    rows, startup_rows = [], []
    bench_predict(cfg, rows, startup_rows)
    print_table(
      f"Whole-process predict, {clip} in wav files (wall seconds with start-up, each a fresh process; "
      f"medians of {cfg['rounds']} interleaved rounds)",
      ["way", "files", "seconds", "x original", "top-1 agrees with the original", "max abs prob difference"],
      rows,
    )
    print_table(
      "Start-up of a process running backends.load_classifier (seconds; batch of 8, 10 s clips, caches warm)",
      ["backend", "interpreter", "imports", "load", "first call", "next call", "teardown", "total"],
      startup_rows,
    )


if __name__ == "__main__":
  app.run(main)
