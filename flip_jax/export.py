"""Export a checkpoint for evaluation or for PyTorch.

  python -m flip_jax.export --checkpoint=WORKDIR_OR_CKPT --format=orbax --out=DIR
  python -m flip_jax.export --checkpoint=... --format=hf --out=DIR
  python -m flip_jax.export --checkpoint=... --format=open_clip --out=DIR

`orbax`: params only (no optimizer state) + config.json + tokenizer.json, what
`inference.load` and evaluation read. `hf`: config.json + model.safetensors that
`transformers.CLIPModel.from_pretrained(DIR)` (or `CLIPVisionModel[WithProjection]`) loads.
`open_clip`: open_clip_config.json + open_clip_model.safetensors for
`open_clip.create_model('local-dir:DIR')`. An architecture the target cannot compute
exactly is refused with the config option that prevents it. A mask token (EVA/SimMIM)
is not exported to PyTorch formats: it plays no part at inference.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from flip_jax import objectives
from flip_jax.interop import clip_layout, hf_clip, open_clip, ours
from flip_jax.interop.rules import ConversionError

WRITERS = {"hf": hf_clip.write, "open_clip": open_clip.write}
FORMATS = ("orbax", *WRITERS)


def export(checkpoint: str, fmt: str, out: str) -> str:
  """Writes `out` in format `fmt` from a training workdir or exported dir; returns its path."""
  if fmt not in FORMATS:
    raise ConversionError(f"--format={fmt!r}: expected one of {FORMATS}")
  ckpt = ours.read(checkpoint, drop=objectives.training_only_params)
  ours.check_params(ckpt.params, ckpt.config, source=checkpoint)
  tokenizer_json = ours.read_tokenizer_json(ckpt.config, ckpt.workdir)
  if fmt == "orbax":
    return ours.write_exported(out, params=ckpt.params, config=ckpt.config, step=ckpt.step,
                               tokenizer_json=tokenizer_json)
  params = {k: v for k, v in ckpt.params.items() if k != "image/mask_token"}
  params, config = clip_layout.fold(params, ckpt.config)
  with ours.output_dir(out) as tmp:
    WRITERS[fmt](tmp, params, config)
    if tokenizer_json is not None:
      with open(os.path.join(tmp, ours.TOKENIZER_FILE), "w") as f:
        f.write(tokenizer_json)
  return os.path.abspath(out)


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    path = export(f.checkpoint, f.format, f.out)
  except (ValueError, OSError) as err:  # ConversionError and unreadable inputs: one line
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoint dir or exported dir.",
                      required=True)
  flags.DEFINE_enum("format", None, FORMATS, "What to write.", required=True)
  flags.DEFINE_string("out", None, "Directory to create.", required=True)
  app.run(main)
