"""The PyTorch reference train step: open_clip's CLIP model, one training step as
open_clip_train runs it (`open_clip_train/train.py: train_one_epoch`): forward of both
towers, `ClipLoss`, backward, AdamW step (weight decay off for gains, biases, embeddings
and the logit scale, as `open_clip_train/main.py` groups them), the logit-scale clamp.

  /path/to/torch/venv/bin/python benchmarks/open_clip_reference.py --model=ViT-B-16 \
      --mask_ratios=0,0.5,0.75 --batch=8 --context_length=32 --steps=3 --threads=2

Masking is open_clip's `force_patch_dropout` (PatchDropout keeps int(L * (1 - r)) random
patches per image plus the class token: FLIP's masking). The model is created with
`pretrained=None` (random init: speed does not depend on the weights). One JSON line per
mask ratio, with the same timing rule as `python -m flip_jax.benchmark` (one warm-up step,
then the median of `--steps` timed steps), so the two compare side by side when run on the
same machine with the same thread count. It needs torch and open_clip_torch (3.3.0 is what
issue 18 compares against) and nothing of flip_jax. Not part of the tests.
"""
import argparse
import json
import math
import resource
import statistics
import time


def param_groups(model, weight_decay: float):
  """open_clip_train/main.py: no decay for 1-D params, biases, norms' gains, embeddings and
  the logit scale."""
  def exclude(name, p):
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
          {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


def make_step(args, mask_ratio: float):
  """open_clip's training step (see the module doc) on one random batch: a function that
  runs one step and returns its wall seconds."""
  import open_clip
  import torch

  torch.manual_seed(0)
  model = open_clip.create_model(args.model, pretrained=None, precision="fp32",
                                 force_patch_dropout=mask_ratio,
                                 force_context_length=args.context_length, output_dict=True)
  model.train()
  loss_fn = open_clip.ClipLoss()
  optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                betas=(0.9, 0.95), eps=1e-8)
  size = model.visual.image_size
  size = size if isinstance(size, int) else size[0]
  vocab = model.vocab_size
  images = torch.randn(args.batch, 3, size, size)
  texts = torch.randint(1, vocab, (args.batch, args.context_length))

  def step() -> float:
    t = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    out = model(images, texts)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100))
    loss.detach().item()
    return time.perf_counter() - t

  return step


def cpu_since(before) -> dict:
  """This process's user and system CPU seconds and minor page faults since `before`."""
  now = resource.getrusage(resource.RUSAGE_SELF)
  return dict(user_s=now.ru_utime - before.ru_utime, sys_s=now.ru_stime - before.ru_stime,
              page_faults=now.ru_minflt - before.ru_minflt)


class Timed:
  """Wraps `step() -> wall seconds`: each call answers {"step_s", "user_s", "sys_s",
  "page_faults", "idle_cpu_s"}: `cpu_since` the step began, and the CPU seconds this
  process used since the previous call ended (the pauses and the other side's step, in
  benchmarks/side_by_side.py, which times flip_jax's step with it too)."""

  def __init__(self, step):
    self.step, self.stepped = step, resource.getrusage(resource.RUSAGE_SELF)

  def __call__(self) -> dict:
    idle = cpu_since(self.stepped)
    before = resource.getrusage(resource.RUSAGE_SELF)
    reply = {"step_s": self.step(), **cpu_since(before),
             "idle_cpu_s": idle["user_s"] + idle["sys_s"]}
    self.stepped = resource.getrusage(resource.RUSAGE_SELF)
    return reply


def versions() -> dict:
  import open_clip
  import torch
  return dict(threads=torch.get_num_threads(), open_clip=open_clip.__version__,
              torch=torch.__version__)


def time_setting(args, mask_ratio: float) -> dict:
  step = make_step(args, mask_ratio)
  step()  # warm-up
  step_s = statistics.median([step() for _ in range(args.steps)])
  return dict(trainer="open_clip", model=args.model, mask_ratio=mask_ratio, batch=args.batch,
              context_length=args.context_length, dtype="float32", step_s=round(step_s, 5),
              images_per_s=round(args.batch / step_s, 3), **versions())


def serve(args):
  """Steps on request, for benchmarks/side_by_side.py: reads lines from stdin and answers
  each with one JSON line on stdout. `setup <mask ratio>`: build the model and run the
  warm-up step; `step`: one timed step, answered as `Timed` answers; `quit`."""
  import sys
  step = None
  for line in sys.stdin:
    words = line.split()
    if not words:
      continue
    command, *rest = words
    if command == "setup":
      step = make_step(args, float(rest[0]))
      step()
      step = Timed(step)
      reply = versions()
    elif command == "step" and step is not None:
      reply = step()
    elif command == "quit":
      return
    else:
      reply = {"error": f"unknown command {line.strip()!r}" if command != "step"
               else "step before setup"}
    print(json.dumps(reply), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="ViT-B-16")
  parser.add_argument("--mask_ratios", default="0,0.5,0.75")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--context_length", type=int, default=32)
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--weight_decay", type=float, default=0.2)
  parser.add_argument("--serve", action="store_true",
                      help="take commands on stdin (benchmarks/side_by_side.py)")
  args = parser.parse_args()

  import torch
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(1)
  if args.serve:
    return serve(args)
  base = None
  for r in (float(x) for x in args.mask_ratios.split(",")):
    row = time_setting(args, r)
    if r == 0.0:
      base = row["step_s"]
    row["speedup_vs_unmasked"] = round(base / row["step_s"], 3) if base else None
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
