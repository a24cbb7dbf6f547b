r"""Writes LAION-like WebDataset shards offline, to measure and test the input pipeline
without a download.

  python -m flip_jax.data.synth --out=DIR --shards=4 [--samples_per_shard=400] [--seed=0]

Layout as img2dataset writes it: `{out}/{shard:05d}.tar` with members `{key}.jpg`,
`{key}.txt` and `{key}.json` (key = shard * 10**4 + index, 9 digits). The images are
scikit-image's bundled sample photos (no download), each re-cropped at a random aspect
ratio, rescaled to sides between `min_side` and `max_side` px (LAION's originals spread
over that range), given a little sensor noise (an upscaled photo alone would compress
far better than a real one) and saved as JPEG at a random quality in 70..95, 4:2:0;
one in 20 is grayscale, as web images sometimes are. Captions are 3..40 words
(log-normal around LAION's ~10) of a fixed vocabulary, alt-text style.
The output is a pure function of the arguments.
"""
import io
import json
import math
import os
import tarfile

import numpy as np
from absl import app
from absl import flags
from PIL import Image

_COLOR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina")
_GRAY_PHOTOS = ("camera", "coins", "moon", "grass", "gravel", "brick", "cell")
_WORDS = (
    "a an the of in on with and for at by from to photo picture image stock vector "
    "illustration close up view portrait woman man child cat dog coffee cup table wooden "
    "white black red blue green yellow vintage modern old new beautiful small large "
    "house street city night sky space rocket launch astronaut suit flag moon stars "
    "galaxy nebula telescope microscope cells tissue stain eye retina medical sample "
    "coins metal brick wall texture gravel grass field garden camera tripod background "
    "isolated design pattern seamless abstract art poster print canvas home decor "
    "kitchen breakfast morning latte foam beans mug saucer sale buy online free shipping "
    "size color high quality hd 4k wallpaper logo icon set collection summer winter "
    "spring autumn travel holiday wedding party birthday gift card").split()


def photos() -> list[np.ndarray]:
  """The sample photos as uint8 RGB or grayscale arrays (all ship with scikit-image)."""
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  colour = [getattr(skimage_data, name)() for name in _COLOR_PHOTOS]
  colour += list(skimage_data.stereo_motorcycle()[:2])
  return colour + [getattr(skimage_data, name)() for name in _GRAY_PHOTOS]


def _caption(rng: np.random.Generator) -> str:
  length = int(np.clip(round(rng.lognormal(math.log(10), 0.6)), 3, 40))
  words = rng.choice(_WORDS, size=length)
  return " ".join(words).capitalize()


def _image(source: np.ndarray, rng: np.random.Generator, min_side: int, max_side: int,
           gray: bool) -> tuple[bytes, tuple[int, int]]:
  """JPEG bytes of a random re-crop of `source`, and its (width, height)."""
  height, width = source.shape[:2]
  aspect = math.exp(rng.uniform(math.log(1 / 2), math.log(2)))  # width / height
  crop_h = max(1, int(min(height, width / aspect) * rng.uniform(0.6, 1.0)))
  crop_w = max(1, min(width, round(crop_h * aspect)))
  top = int(rng.integers(0, height - crop_h + 1))
  left = int(rng.integers(0, width - crop_w + 1))
  long_side = int(rng.integers(min_side, max_side + 1))
  short_side = max(min_side, round(long_side * min(crop_w, crop_h) / max(crop_w, crop_h)))
  size = (long_side, short_side) if crop_w >= crop_h else (short_side, long_side)
  image = Image.fromarray(source[top:top + crop_h, left:left + crop_w])
  pixels = np.asarray(image.convert("L" if gray else "RGB").resize(size, Image.BICUBIC),
                      np.float32)
  pixels += rng.normal(0.0, 3.0, pixels.shape[:2] + (1,) * (pixels.ndim - 2))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      out, "JPEG", quality=int(rng.integers(70, 96)), subsampling="4:2:0")
  return out.getvalue(), size


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)  # mtime 0 etc.: the same arguments give the same bytes
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shards(out: str, shards: int, samples_per_shard: int = 400, seed: int = 0,
                 min_side: int = 256, max_side: int = 1024) -> list[str]:
  """Writes the shards; returns their paths."""
  if not 0 < min_side <= max_side:
    raise ValueError(f"need 0 < min_side <= max_side, got {min_side}, {max_side}")
  sources = photos()
  os.makedirs(out, exist_ok=True)
  paths = []
  for shard in range(shards):
    rng = np.random.default_rng([seed, shard])
    path = os.path.join(out, f"{shard:05d}.tar")
    with tarfile.open(path, "w") as tar:
      for index in range(samples_per_shard):
        key = f"{shard * 10_000 + index:09d}"
        gray = rng.random() < 0.05
        source = sources[int(rng.integers(len(sources)))]
        jpeg, (width, height) = _image(source, rng, min_side, max_side, gray)
        caption = _caption(rng)
        _add(tar, f"{key}.jpg", jpeg)
        _add(tar, f"{key}.txt", caption.encode("utf-8"))
        _add(tar, f"{key}.json", json.dumps(dict(key=key, caption=caption, width=width,
                                                 height=height)).encode("utf-8"))
    paths.append(path)
  return paths


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  for path in write_shards(f.out, f.shards, f.samples_per_shard, f.seed, f.min_side,
                           f.max_side):
    print(path)


if __name__ == "__main__":
  # Flags only when run as the program: tests import this module beside data.pack, which
  # defines --out too.
  flags.DEFINE_string("out", None, "Output folder.", required=True)
  flags.DEFINE_integer("shards", 4, "Number of tar shards.")
  flags.DEFINE_integer("samples_per_shard", 400, "Samples per shard.")
  flags.DEFINE_integer("seed", 0, "Everything random derives from it.")
  flags.DEFINE_integer("min_side", 256, "Smallest image side, px.")
  flags.DEFINE_integer("max_side", 1024, "Largest image side, px.")
  app.run(main)
