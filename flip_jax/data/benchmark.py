r"""Input pipeline benchmark: how many images/s the training pipeline delivers per core,
and where the time goes.

  python -m flip_jax.data.benchmark --config=configs/flip_b16.py --data_dir=DIR \
      [--num_workers=0,1,2] [--batch_size=256] [--batches=8] [--repeats=1] \
      [--torch_python=/path/to/venv/bin/python] [--out=FILE]

DIR holds WebDataset tar shards (`python -m flip_jax.data.synth --out=DIR` writes
LAION-like ones offline) or is a shard pattern. One JSON line per setting:

- `"pipeline": "flip_jax"`, per `--num_workers` value: `build_train` (the real training
  pipeline: read, shuffle, decode, RandomResizedCrop, flip, tokenise, batch; images
  stay uint8: the train step normalises them on the device)
  for `--batches` batches of `--batch_size` after `--warmup_batches`: `images_per_s`
  (wall clock), `cores` (the processes that work: the workers, or the main process for
  0 workers, at most the machine's cores), `images_per_s_per_core`, and
  `images_per_cpu_s` (images per CPU-second of this process and its workers: what one
  fully used core delivers, and the figure that stays fair on a shared machine);
- `"pipeline": "torch_reference"` (with `--torch_python`): the PyTorch pipeline of
  `benchmarks/torch_reference.py` (webdataset + PIL + torchvision, as open_clip builds
  it) doing the same work with the same tokenizer, run right after ours at each worker
  count, so both are measured in the same machine state;
- `"setting": "stages"`: the same stages run one after another in this process on
  `--stage_images` samples, CPU milliseconds per image for read, decode, crop_resize,
  flip, batch and tokenise, each one's share, and the fraction of the
  images' pixels that decoding at reduced scale produced.

`--repeats` runs the worker sweep (and the reference) that many times, interleaved.
The tokenizer is the config's when it is available offline (a local file, or the
Hugging Face cache for a hub name), else a WordPiece vocab of the same class learned
from the shards' captions; the `tokenizer` field of every line says which.
`--out` also writes the lines to FILE, which `flip_jax.plan --data_benchmark=FILE` reads.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import psutil
import tokenizers
from etils import epath

from flip_jax.data import pipeline
from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.data import transforms
from flip_jax.data import wds

REFERENCE_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                                "torch_reference.py")


def shard_pattern(data_dir: str) -> str:
  """A folder of tar shards -> 'folder/*.tar'; a pattern stays as it is."""
  path = epath.Path(data_dir)
  return str(path / "*.tar") if path.is_dir() else data_dir


def cpu_seconds() -> float:
  """User + system CPU time of this process and its live children (grain workers)."""
  me = psutil.Process()
  total = 0.0
  for process in [me] + me.children(recursive=True):
    try:
      times = process.cpu_times()
    except psutil.NoSuchProcess:
      continue
    total += times.user + times.system
  return total


def captions(shards: list[str], limit: int = 100_000) -> list[str]:
  """The captions of the first `limit` samples of the shards."""
  samples = (r for shard in shards for r in wds.read_samples(shard))
  return [r["text"] for r in itertools.islice(samples, limit)]


def offline_tokenizer(config, shards: list[str]) -> tuple[tokenizer_lib.TextTokenizer, str]:
  """(tokenizer, what it is): the config's if it is available without a download, else a
  WordPiece vocab of the same (BERT) class learned from the shards' captions."""
  spec = config.tokenizer
  if spec == tokenizer_lib.DIGITS_SPEC:
    return (tokenizer_lib.TextTokenizer(tokenizer_lib.build_digits_wordpiece(),
                                        config.text_len), spec)
  local = tokenizer_lib.local_file(spec)
  if local is not None:
    return (tokenizer_lib.TextTokenizer(tokenizers.Tokenizer.from_file(local),
                                        config.text_len), f"{spec} ({local})")
  texts = captions(shards)
  learned = tokenizer_lib.build_wordpiece(texts)
  return (tokenizer_lib.TextTokenizer(learned, config.text_len),
          f"wordpiece learned from {len(texts)} captions of the shards ({spec!r}'s class; "
          f"its vocab is not available offline); vocab {learned.get_vocab_size()}")


def measure_pipeline(config, tokenizer, num_workers: int, batches: int,
                     warmup_batches: int) -> dict:
  """Images/s of `pipeline.build_train` with `num_workers` grain worker processes."""
  c = config.copy_and_resolve_references()
  c.data.num_workers = num_workers
  iterator = pipeline.build_train(c, tokenizer)
  try:
    for _ in range(warmup_batches):
      next(iterator)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
  finally:
    if hasattr(iterator, "close"):
      iterator.close()
  if batch["image"].shape[0] != c.batch_size:
    raise AssertionError(f"batch of {batch['image'].shape[0]}, expected {c.batch_size}")
  n = batches * c.batch_size
  cores = min(os.cpu_count() or 1, max(1, num_workers))
  return dict(pipeline="flip_jax", num_workers=num_workers, cores=cores,
              batch_size=c.batch_size, batches=batches, images_per_s=round(n / wall, 2),
              images_per_s_per_core=round(n / wall / cores, 2),
              images_per_cpu_s=round(n / cpu, 2))


def measure_reference(python: str, config, pattern: str, tokenizer_json: str,
                      num_workers: int, batches: int, warmup_batches: int) -> dict:
  """The PyTorch reference pipeline's JSON line (run by `python`, in its own process)."""
  d = config.data
  command = [python, REFERENCE_SCRIPT, f"--shards={pattern}",
             f"--tokenizer_json={tokenizer_json}", f"--num_workers={num_workers}",
             f"--batch_size={config.batch_size}", f"--batches={batches}",
             f"--warmup_batches={warmup_batches}", f"--image_size={config.image_size}",
             "--scale", *map(str, d.rrc_area), f"--text_len={config.text_len}",
             f"--shuffle_buffer={d.shuffle_buffer}", "--mean", *map(str, d.mean),
             "--std", *map(str, d.std)]
  if tuple(d.rrc_ratio) != (3 / 4, 4 / 3) or not d.flip:
    raise ValueError("the reference pipeline crops at ratio (3/4, 4/3) and flips; "
                     f"config.data has rrc_ratio={d.rrc_ratio}, flip={d.flip}")
  out = subprocess.run(command, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def stage_times(config, tokenizer, shards: list[str], num_images: int) -> dict:
  """CPU ms per image of each stage, run one after another in this process on the same
  functions the pipeline calls."""
  size, d = config.image_size, config.data
  rng = np.random.default_rng(config.seed)
  spent = dict.fromkeys(("read", "decode", "crop_resize", "flip", "batch", "tokenise"), 0.0)
  clock = time.process_time
  t = clock()
  samples = list(itertools.islice(
      itertools.cycle(r for shard in shards for r in wds.read_samples(shard)), num_images))
  spent["read"] = clock() - t
  crops, decoded_pixels, full_pixels = [], 0, 0
  flip = transforms.RandomFlip()
  for sample in samples:
    sizes = []

    def draw_box(height, width):
      sizes.append(height * width)  # pylint: disable=cell-var-from-loop
      return transforms.random_crop_box(height, width, d.rrc_area, d.rrc_ratio, rng)

    t = clock()
    pixels, box = transforms.decode_for_crop(sample["image"], size, draw_box,
                                             d.max_image_pixels)
    t1 = clock()
    crop = transforms.resize_box(pixels, box, size)
    t2 = clock()
    crop = flip.random_map({"image": crop}, rng)["image"]
    t3 = clock()
    spent["decode"] += t1 - t
    spent["crop_resize"] += t2 - t1
    spent["flip"] += t3 - t2
    decoded_pixels += pixels.shape[0] * pixels.shape[1]
    full_pixels += sizes[0]
    crops.append(crop)
  batch_size = config.batch_size
  for start in range(0, num_images, batch_size):
    t = clock()
    np.stack(crops[start:start + batch_size])
    t1 = clock()
    tokenizer.encode([s["text"] for s in samples[start:start + batch_size]])
    t2 = clock()
    spent["batch"] += t1 - t
    spent["tokenise"] += t2 - t1
  total = sum(spent.values())
  return dict(setting="stages", images=num_images,
              ms_per_image={k: round(1e3 * v / num_images, 3) for k, v in spent.items()},
              share={k: round(v / total, 3) for k, v in spent.items()},
              images_per_cpu_s=round(num_images / total, 2),
              decoded_pixel_fraction=round(decoded_pixels / full_pixels, 3))


def run(config, data_dir: str, num_workers: list[int], batches: int, warmup_batches: int,
        repeats: int = 1, stage_images: int = 0, torch_python: str = "", report=print):
  """Every measurement as a dict, each reported as it is done (see the module doc)."""
  config = config.copy_and_resolve_references()
  pattern = shard_pattern(data_dir)
  shards = wds.list_shards(pattern)
  config.data.update(source="wds", data_dir=pattern)
  tokenizer, tokenizer_name = offline_tokenizer(config, shards)
  common = dict(tokenizer=tokenizer_name, image_size=config.image_size,
                shards=len(shards), cpu_count=os.cpu_count())
  rows = []

  def emit(row):
    row = dict(row, **common)
    rows.append(row)
    report(row)

  if stage_images:
    emit(stage_times(config, tokenizer, shards, stage_images))
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_json = os.path.join(tmp, "tokenizer.json")
    with open(tokenizer_json, "w", encoding="utf-8") as f:
      f.write(tokenizer.to_str())
    for repeat in range(repeats):
      for workers in num_workers:
        emit(dict(measure_pipeline(config, tokenizer, workers, batches, warmup_batches),
                  repeat=repeat))
        if torch_python:
          emit(dict(measure_reference(torch_python, config, pattern, tokenizer_json,
                                      workers, batches, warmup_batches), repeat=repeat))
  return rows


def main(argv, flags: dict):
  del argv
  config = flags["config"].value
  if flags["batch_size"].value:
    config.batch_size = flags["batch_size"].value
  out = flags["out"].value
  lines = []

  def report(row):
    line = json.dumps(row)
    lines.append(line)
    print(line, flush=True)

  run(config, flags["data_dir"].value, [int(n) for n in flags["num_workers"].value],
      flags["batches"].value, flags["warmup_batches"].value, flags["repeats"].value,
      flags["stage_images"].value, flags["torch_python"].value, report)
  if out:
    epath.Path(out).write_text("\n".join(lines) + "\n")


def define_flags() -> dict:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  out = dict(
      config=config_flags.DEFINE_config_file("config", None, "configs/*.py file",
                                             lock_config=False),
      data_dir=flags.DEFINE_string("data_dir", None, "folder of tar shards, or a pattern"),
      num_workers=flags.DEFINE_list("num_workers", ["0", "1", "2"],
                                    "grain worker processes to sweep"),
      batch_size=flags.DEFINE_integer("batch_size", 256, "images per batch (one host's); "
                                      "0 = the config's global batch"),
      batches=flags.DEFINE_integer("batches", 8, "batches timed per setting"),
      warmup_batches=flags.DEFINE_integer("warmup_batches", 2, "batches before timing"),
      repeats=flags.DEFINE_integer("repeats", 1, "sweeps, interleaved"),
      stage_images=flags.DEFINE_integer("stage_images", 256, "images of the per-stage "
                                        "timing (0: skip it)"),
      torch_python=flags.DEFINE_string("torch_python", "", "a Python with torch, "
                                       "torchvision, webdataset, tokenizers and psutil: "
                                       "also run benchmarks/torch_reference.py"),
      out=flags.DEFINE_string("out", "", "also write the JSON lines to this file"))
  flags.mark_flags_as_required(["config", "data_dir"])
  return out


if __name__ == "__main__":
  import functools  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  _FLAGS = define_flags()
  app.run(functools.partial(main, flags=_FLAGS))
