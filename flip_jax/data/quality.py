"""Broken records are skipped where they are found and counted; training goes on.

The stage that finds a broken record (the tar reader, the image decoder) replaces it by a
*tombstone* {'skipped': reason, 'key': ...}, which flows down the stream like a sample.
`SkipAndCount`, right after decoding, drops tombstones and counts them by reason in its
iterator state. So the counts are checkpointed by Orbax with the rest of the iterator
(cumulative over restarts), travel from grain worker processes to the main process inside
each worker's state, and `skip_counts(iterator)` reads them back for metrics.jsonl
(`data/skipped/<reason>`).

Reasons:
  empty_file        a zero-byte image
  not_an_image      bytes that no image decoder recognises
  decode_error      an image whose data is truncated or corrupt
  too_large         more pixels than config.data.max_image_pixels (decompression bombs)
  empty_caption     a caption that is empty or only whitespace
  bad_caption       a caption that is not UTF-8
  missing_caption   a tar sample with an image but no .txt
  missing_image     a tar sample with a .txt but no image
  unreadable_shard  a tar shard that cannot be opened or read to its end (once per visit)

Harmless oddities are converted, not skipped: CMYK, grayscale, palette, RGBA (alpha
dropped) and 16-bit images become 8-bit RGB (`transforms.to_rgb`).
"""
import warnings

import grain
import numpy as np
from absl import logging
from PIL import Image

from flip_jax.data import transforms

REASONS = ("empty_file", "not_an_image", "decode_error", "too_large", "empty_caption",
           "bad_caption", "missing_caption", "missing_image", "unreadable_shard")
STATE_KEY = "skipped_records"
# A stream that yields nothing usable would otherwise spin forever.
MAX_SKIPS_IN_A_ROW = 10_000

# config.data.max_image_pixels decides; Pillow would warn about every image above its own
# (lower-than-error) threshold before our check skips it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def tombstone(reason: str, key: str) -> dict:
  if reason not in REASONS:
    raise ValueError(f"unknown skip reason {reason!r}; known: {REASONS}")
  logging.log_every_n_seconds(logging.WARNING, "skipping %s: %s", 10, key, reason)
  return {"skipped": reason, "key": key}


def _problem(decode) -> tuple[str | None, np.ndarray | None]:
  """(reason, None) when `decode()` finds a broken encoded image, else (None, its uint8)."""
  try:
    return None, decode()
  except (transforms.ImageTooLarge, Image.DecompressionBombError):
    return "too_large", None
  except Image.UnidentifiedImageError:
    return "not_an_image", None
  except (OSError, SyntaxError, ValueError, EOFError):  # what Pillow raises on bad data
    return "decode_error", None


class DecodeCropOrSkip(grain.transforms.RandomMap):
  """Decoding fused with the training crop (`transforms.RandomResizedCrop`, which decodes
  a JPEG at the scale the crop needs): an encoded image that cannot be decoded becomes a
  tombstone; tombstones pass through. Arrays (decoded by the source) are converted as
  `transforms.to_rgb` does and cropped; an error there is a bug and raises."""

  def __init__(self, crop: transforms.RandomResizedCrop, max_pixels: int):
    self._crop = crop
    self._max_pixels = max_pixels

  def random_map(self, record, rng: np.random.Generator):
    if "skipped" in record:
      return record
    image = record["image"]
    if isinstance(image, (bytes, np.bytes_)):
      data = bytes(image)
      reason, pixels = ("empty_file", None) if not data else _problem(
          lambda: self._crop.crop(data, rng, self._max_pixels))
      if reason:
        return tombstone(reason, str(record.get("key", "")))
    else:
      pixels = self._crop.crop(transforms.to_rgb(image), rng)
    out = {k: v for k, v in record.items() if k != "key"}
    out["image"] = pixels
    return out


class SkipAndCount(grain.IterDataset):
  """Drops tombstones from the stream, counting them by reason in the iterator state."""

  def __init__(self, parent: grain.IterDataset):
    super().__init__(parent)

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipAndCountIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "SkipAndCount"


class _SkipAndCountIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._counts = dict.fromkeys(REASONS, 0)
    self._in_a_row = 0

  def __next__(self):
    while True:
      record = next(self._parent)
      reason = record.get("skipped")
      if reason is None:
        self._in_a_row = 0
        return record
      self._counts[reason] += 1
      self._in_a_row += 1
      if self._in_a_row > MAX_SKIPS_IN_A_ROW:
        raise ValueError(f"{self._in_a_row} broken records in a row, none usable; "
                         f"skipped so far: {self._counts}")

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), STATE_KEY: dict(self._counts)}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._counts = dict(dict.fromkeys(REASONS, 0), **state[STATE_KEY])
    self._in_a_row = 0


class _SkipReasonForDropped(grain.MapDataset):
  """Random-access counterpart: `augmented[i]`, or where an earlier filter dropped that
  element (None), the tombstone `decoded[i]` holds. Only broken records are decoded twice.

  Formats augment a MapDataset (decoding and cropping then run in grain's read threads),
  and their transforms cannot take tombstones; so tombstones are filtered out before the
  augmentation and put back here, for `SkipAndCount` after `to_iter_dataset`.
  """

  def __init__(self, augmented: grain.MapDataset, decoded: grain.MapDataset):
    super().__init__([augmented, decoded])
    self._augmented, self._decoded = augmented, decoded

  def __len__(self) -> int:
    return len(self._augmented)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    record = self._augmented[index]
    return self._decoded[index] if record is None else record

  def __str__(self) -> str:
    return "SkipReasonForDropped"


def _usable(record) -> bool:
  return "skipped" not in record


def decode_and_augment(records, crop: transforms.RandomResizedCrop, augment,
                       max_pixels: int):
  """Decoded, cropped and augmented records with broken ones as tombstones, for either
  dataset kind: an IterDataset stream comes back with tombstones already counted and
  dropped; a MapDataset comes back with tombstones in place (count them after
  `to_iter_dataset`)."""
  decoded = records.random_map(DecodeCropOrSkip(crop, max_pixels))
  if isinstance(decoded, grain.MapDataset):
    usable = decoded.filter(_usable)
    return _SkipReasonForDropped(augment(usable), decoded)
  return augment(SkipAndCount(decoded))


def skip_counts(iterator: grain.DatasetIterator) -> dict[str, int]:
  """Records skipped so far, by reason, summed over every `SkipAndCount` in the iterator's
  state (one per grain worker process)."""
  totals = dict.fromkeys(REASONS, 0)

  def visit(node):
    if isinstance(node, dict):
      for key, value in node.items():
        if key == STATE_KEY:
          for reason, n in value.items():
            totals[reason] += int(n)
        else:
          visit(value)
    elif isinstance(node, (list, tuple)):
      for value in node:
        visit(value)

  visit(iterator.get_state())
  return totals
