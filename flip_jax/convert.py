"""Import CLIP weights into an exported flip_jax directory.

  python -m flip_jax.convert --from=hf --src=HF_DIR --out=CKPT
  python -m flip_jax.convert --from=open_clip --src=OPEN_CLIP_DIR --out=CKPT

`--from=hf` reads a Hugging Face `CLIPModel`, `CLIPVisionModel` or
`CLIPVisionModelWithProjection` directory (config.json + *.safetensors); `--from=open_clip`
reads open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors). CKPT
then loads with `inference.load(CKPT)` and trains on with `--config.init_from=CKPT`.
A tokenizer.json in the source directory is carried over. Nothing downloads, and no
pickled weights are read.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from flip_jax.interop import foreign, ours


def convert(fmt: str, src: str, out: str) -> str:
  """Writes the exported directory `out`; returns its absolute path."""
  params, config = foreign.load(fmt, src)
  tokenizer_file = os.path.join(src, ours.TOKENIZER_FILE)
  tokenizer_json = None
  if os.path.isfile(tokenizer_file):
    with open(tokenizer_file) as f:
      tokenizer_json = f.read()
  return ours.write_exported(out, params=params, config=config, tokenizer_json=tokenizer_json)


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    path = convert(f["from"].value, f.src, f.out)
  except (ValueError, OSError) as err:  # ConversionError and unreadable inputs: one line
    print(f"error: {err}", file=sys.stderr)
    sys.exit(1)
  print(path)


if __name__ == "__main__":
  flags.DEFINE_enum("from", None, sorted(foreign.LOADERS), "Format of --src.", required=True)
  flags.DEFINE_string("src", None, "Directory of the weights to import.", required=True)
  flags.DEFINE_string("out", None, "Exported directory to create.", required=True)
  app.run(main)
