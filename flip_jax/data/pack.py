r"""Packs an image folder and a captions file into training shards.

  python -m flip_jax.data.pack --images=DIR --captions=FILE --format=tar --out=DIR

The captions file has one `filename<TAB>caption` line per image. `--format=tar` writes
WebDataset shards (`{out}/00000.tar`, members `{key}.{ext}` + `{key}.txt`, as img2dataset
does) for `config.data.source='wds'`; `--format=array_record` writes a TFDS dataset
(`{out}/{name}/1.0.0/`, features 'image' and 'caption') for `config.data.source='tfds'`.
"""
import io
import math
import os
import tarfile

from absl import app
from absl import flags
from array_record.python import array_record_module
from PIL import Image

_IMAGES = flags.DEFINE_string("images", None, "Folder of the images.")
_CAPTIONS = flags.DEFINE_string("captions", None, "filename<TAB>caption per line.")
_FORMAT = flags.DEFINE_enum("format", "tar", ["tar", "array_record"], "Output format.")
_OUT = flags.DEFINE_string("out", None, "Output folder (the TFDS data_dir for array_record).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 1000, "Samples per shard.")
_NAME = flags.DEFINE_string("name", "image_text_folder", "TFDS name (array_record only).")


def read_captions(path: str) -> list[tuple[str, str]]:
  """(filename, caption) pairs; blank lines are ignored."""
  pairs = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        if "\t" not in line:
          raise ValueError(f"{path}:{number}: expected filename<TAB>caption")
        pairs.append(tuple(line.rstrip("\n").split("\t", 1)))
  return pairs


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)  # mtime 0 etc.: identical inputs give identical shards
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def pack_tar(images_dir: str, pairs, out_dir: str, shard_size: int) -> list[str]:
  """Writes WebDataset shards of `shard_size` samples; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for shard in range(math.ceil(len(pairs) / shard_size)):
    path = os.path.join(out_dir, f"{shard:05d}.tar")
    with tarfile.open(path, "w") as tar:
      for index in range(shard * shard_size, min((shard + 1) * shard_size, len(pairs))):
        filename, caption = pairs[index]
        extension = os.path.splitext(filename)[1].lower().lstrip(".").replace("jpeg", "jpg")
        with open(os.path.join(images_dir, filename), "rb") as f:
          _add_member(tar, f"{index:09d}.{extension}", f.read())
        _add_member(tar, f"{index:09d}.txt", caption.encode("utf-8"))
    paths.append(path)
  return paths


def _tfds_image(path: str):
  """RGB files go in as their original bytes; other modes are converted (and PNG-encoded)
  because the TFDS image feature is 3-channel."""
  with Image.open(path) as image:
    if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
      with open(path, "rb") as f:
        return io.BytesIO(f.read())
    return image.convert("RGB")


def pack_array_record(images_dir: str, pairs, out_dir: str, shard_size: int,
                      name: str) -> None:
  """Writes a TFDS dataset `name` (split 'train', version 1.0.0) as ArrayRecord shards.

  The shards and metadata are written directly (TFDS's own example serialisation and
  `write_metadata`) rather than through a dataset builder, which would want to locate
  builder source code and fails for builders defined outside TFDS's package layout.
  """
  # TensorFlow Datasets is slow to import; the tar format does not need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({"image": tfds.features.Image(),
                                         "caption": tfds.features.Text()})
  version_dir = os.path.join(out_dir, name, "1.0.0")
  os.makedirs(version_dir, exist_ok=True)
  num_shards = math.ceil(len(pairs) / shard_size)
  shard_lengths, num_bytes = [], 0
  for shard in range(num_shards):
    rows = pairs[shard * shard_size:(shard + 1) * shard_size]
    path = os.path.join(version_dir,
                        f"{name}-train.array_record-{shard:05d}-of-{num_shards:05d}")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for filename, caption in rows:
      example = features.serialize_example(
          {"image": _tfds_image(os.path.join(images_dir, filename)), "caption": caption})
      writer.write(example)
      num_bytes += len(example)
    writer.close()
    shard_lengths.append(len(rows))
  tfds.folder_dataset.write_metadata(
      data_dir=version_dir, features=features, check_data=False,
      split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=shard_lengths,
                                       num_bytes=num_bytes)])


def main(argv) -> None:
  del argv
  pairs = read_captions(_CAPTIONS.value)
  if _FORMAT.value == "tar":
    pack_tar(_IMAGES.value, pairs, _OUT.value, _SHARD_SIZE.value)
  else:
    pack_array_record(_IMAGES.value, pairs, _OUT.value, _SHARD_SIZE.value, _NAME.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["images", "captions", "out"])
  app.run(main)
