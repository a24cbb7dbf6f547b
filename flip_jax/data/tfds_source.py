"""Random access to a prepared TFDS dataset stored as ArrayRecord (`tfds.data_source`):
no tf.data, no download; images arrive decoded (or as bytes), captions as bytes, str or a
list of captions.
"""
import grain
import numpy as np
import tensorflow_datasets as tfds


def nested_get(record: dict, key: str):
  """record['a']['b'] for key 'a/b' (e.g. COCO's 'captions/text')."""
  for part in key.split("/"):
    record = record[part]
  return record


def data_source(name: str, split: str, data_dir: str):
  """The random-access source; `data_dir=''` means TFDS's default directory."""
  return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)


class ImageTextRecords(grain.transforms.MapWithIndex):
  """Maps a TFDS record to the pipeline's {'image', 'text', 'label', 'key'} record; a field
  whose key is '' is left out (image-only or labelled datasets have no captions)."""

  def __init__(self, image_key: str, text_key: str, split: str, label_key: str = ""):
    self._image_key = image_key
    self._text_key = text_key
    self._label_key = label_key
    self._split = split

  def map_with_index(self, index: int, record: dict) -> dict:
    out = {"image": nested_get(record, self._image_key), "key": f"{self._split}-{index}"}
    if self._text_key:
      out["text"] = nested_get(record, self._text_key)
    if self._label_key:
      out["label"] = np.int32(nested_get(record, self._label_key))
    return out
