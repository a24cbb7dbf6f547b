"""The PyTorch reference input pipeline, as open_clip builds it for WebDataset shards
(`open_clip_train/data.py: get_wds_dataset`): webdataset streams samples out of the tar
shards (split by worker), shuffles them, PIL decodes, torchvision's
RandomResizedCrop(size, scale, bicubic) + horizontal flip + ToTensor + Normalize, the
tokenizer encodes each caption, samples are batched in the worker and a DataLoader
(`wds.WebLoader`) runs the workers.

  /path/to/torch/venv/bin/python benchmarks/torch_reference.py --shards='DIR/*.tar' \
      --tokenizer_json=FILE --num_workers=2 --batch_size=256 --batches=8

Prints one JSON line: images/s, images/s per core, CPU seconds per image. It needs torch,
torchvision, webdataset, tokenizers and psutil, and nothing of flip_jax (it runs in its
own environment: `python -m flip_jax.data.benchmark --torch_python=...` starts it beside
our pipeline, so both are measured in the same machine state). Not part of the tests.
"""
import argparse
import glob
import json
import os
import time

import psutil


def cpu_seconds() -> float:
  """User + system CPU time of this process and its live children (the workers)."""
  me = psutil.Process()
  total = 0.0
  for process in [me] + me.children(recursive=True):
    try:
      times = process.cpu_times()
    except psutil.NoSuchProcess:
      continue
    total += times.user + times.system
  return total


def build_loader(args):
  import tokenizers
  import torch
  import webdataset as wds
  from torchvision import transforms as T

  tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer_json)
  tokenizer.enable_truncation(max_length=args.text_len)
  tokenizer.enable_padding(length=args.text_len, pad_id=tokenizer.token_to_id("[PAD]"))

  def tokenize(text):
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)

  transform = T.Compose([
      T.RandomResizedCrop(args.image_size, scale=tuple(args.scale), ratio=(3 / 4, 4 / 3),
                          interpolation=T.InterpolationMode.BICUBIC),
      T.RandomHorizontalFlip(),
      T.ToTensor(),
      T.Normalize(mean=args.mean, std=args.std),
  ])
  shards = sorted(glob.glob(args.shards))
  pipeline = wds.DataPipeline(
      wds.SimpleShardList(shards),
      wds.split_by_worker,
      wds.tarfile_to_samples(),
      wds.shuffle(args.shuffle_buffer),
      wds.decode("pilrgb"),
      wds.rename(image="jpg;png;jpeg;webp", text="txt"),
      wds.map_dict(image=transform, text=tokenize),
      wds.to_tuple("image", "text"),
      wds.batched(args.batch_size, partial=False),
  ).repeat()
  return wds.WebLoader(pipeline, batch_size=None, shuffle=False,
                       num_workers=args.num_workers,
                       persistent_workers=args.num_workers > 0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shards", required=True, help="glob of the tar shards")
  parser.add_argument("--tokenizer_json", required=True)
  parser.add_argument("--num_workers", type=int, default=1)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--warmup_batches", type=int, default=2)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.0))
  parser.add_argument("--text_len", type=int, default=32)
  parser.add_argument("--shuffle_buffer", type=int, default=1000)
  parser.add_argument("--mean", type=float, nargs=3, default=(0.48145466, 0.4578275, 0.40821073))
  parser.add_argument("--std", type=float, nargs=3, default=(0.26862954, 0.26130258, 0.27577711))
  args = parser.parse_args()

  import torch
  torch.set_num_threads(1)  # what DataLoader workers get; the main process only waits
  batches = iter(build_loader(args))
  for _ in range(args.warmup_batches):
    images, texts = next(batches)
  cpu0, t0 = cpu_seconds(), time.perf_counter()
  for _ in range(args.batches):
    images, texts = next(batches)
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
  assert images.shape == (args.batch_size, 3, args.image_size, args.image_size), images.shape
  assert texts.shape == (args.batch_size, args.text_len), texts.shape
  n = args.batches * args.batch_size
  cores = min(os.cpu_count() or 1, max(1, args.num_workers))
  print(json.dumps(dict(
      pipeline="torch_reference", num_workers=args.num_workers, cores=cores,
      batch_size=args.batch_size, batches=args.batches, images_per_s=round(n / wall, 2),
      images_per_s_per_core=round(n / wall / cores, 2),
      images_per_cpu_s=round(n / cpu, 2), torch=torch.__version__)), flush=True)


if __name__ == "__main__":
  main()
