"""Random access to a prepared TFDS dataset stored as ArrayRecord (`tfds.data_source`):
no tf.data, no download; images arrive decoded (or as bytes), captions as bytes, str or a
list of captions.
"""
import grain
import tensorflow_datasets as tfds


def nested_get(record: dict, key: str):
  """record['a']['b'] for key 'a/b' (e.g. COCO's 'captions/text')."""
  for part in key.split("/"):
    record = record[part]
  return record


def data_source(name: str, split: str, data_dir: str):
  """The random-access source; `data_dir=''` means TFDS's default directory."""
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)


def class_names(name: str, data_dir: str, label_key: str) -> tuple[str, ...]:
  """Names of a ClassLabel feature, read from the prepared dataset's metadata."""
  builder = tfds.builder(name, data_dir=data_dir or None)
  return tuple(builder.info.features[label_key].names)


class ImageTextRecords(grain.transforms.MapWithIndex):
  """Maps a TFDS record to the pipeline's {'image', 'text', 'key'} record."""

  def __init__(self, image_key: str, text_key: str, split: str):
    self._image_key = image_key
    self._text_key = text_key
    self._split = split

  def map_with_index(self, index: int, record: dict) -> dict:
    return {"image": nested_get(record, self._image_key),
            "text": nested_get(record, self._text_key),
            "key": f"{self._split}-{index}"}
