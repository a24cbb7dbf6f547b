"""Streams image-text pairs out of WebDataset tar shards (img2dataset's LAION layout:
`{key}.jpg|png|webp` next to `{key}.txt`), as a resumable grain `IterDataset`.

Each host reads only its shards; each epoch visits them in a new seeded order. The
iterator state is (epoch, shard position, records taken from that shard), so a restored
iterator reopens the shard and skips forward to exactly where it stopped.

Broken samples (a member without its pair, a caption that is empty or not UTF-8) and
shards that cannot be read come out as tombstones (see data/quality.py), to be counted
and dropped downstream; `read_samples` gives the complete samples only.
"""
import re
import tarfile
import zlib

import grain
import numpy as np
from absl import logging
from etils import epath

from flip_jax.data import quality

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_GLOB_CHARS = ("*", "?", "[")


def _expand_ranges(pattern: str) -> list[str]:
  """WebDataset's brace ranges, zero-padded like the start: 'a{08..10}' -> a08 a09 a10."""
  match = _RANGE.search(pattern)
  if not match:
    return [pattern]
  first, last = match.groups()
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [path for i in range(int(first), int(last) + 1)
          for path in _expand_ranges(f"{head}{i:0{len(first)}d}{tail}")]


def list_shards(pattern: str) -> list[str]:
  """Shard paths, in a fixed order, from brace ranges ('gs://b/laion/{00000..41407}.tar',
  not listed: a bucket listing of 40k files is slow) and/or a file-name glob
  ('/data/laion/*.tar', sorted)."""
  shards = []
  for expanded in _expand_ranges(pattern):
    path = epath.Path(expanded)
    if any(c in path.name for c in _GLOB_CHARS):
      shards += sorted(str(p) for p in path.parent.glob(path.name))
    else:
      shards.append(expanded)
  if not shards:
    raise FileNotFoundError(f"no tar shards match {pattern!r}")
  return shards


def host_shards(shards: list[str], process_index: int, process_count: int) -> list[str]:
  """This host's shards (round robin), so hosts read disjoint data."""
  if len(shards) < process_count:
    raise ValueError(f"{len(shards)} shards cannot feed {process_count} hosts")
  return shards[process_index::process_count]


def _split_name(member_name: str) -> tuple[str, str]:
  """WebDataset convention: the key ends at the first dot of the file's base name."""
  directory, _, base = member_name.rpartition("/")
  stem, _, extension = base.partition(".")
  return f"{directory}/{stem}" if directory else stem, extension.lower()


def _sample(key: str, members: dict[str, bytes]) -> dict:
  """The sample, or a tombstone saying what is wrong with it."""
  image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
  if image_ext is None:
    return quality.tombstone("missing_image", key)
  if "txt" not in members:
    return quality.tombstone("missing_caption", key)
  try:
    text = members["txt"].decode("utf-8")
  except UnicodeDecodeError:
    return quality.tombstone("bad_caption", key)
  if not text.strip():
    return quality.tombstone("empty_caption", key)
  return {"image": members[image_ext], "text": text, "key": key}


# What a tar shard that cannot be opened or breaks off raises.
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


def _next_file(tar: tarfile.TarFile):
  """(name, bytes) of the tar's next file member; None at the end."""
  while (member := tar.next()) is not None:
    if member.isfile():
      return member.name, tar.extractfile(member).read()
  return None


def _file_members(shard: str):
  """(name, bytes) of each file member of a tar shard, in file order; if the shard cannot
  be opened or breaks off, an 'unreadable_shard' tombstone (a dict) last.

  No `yield` inside a try block: a generator left suspended is closed at interpreter
  exit, when this module's globals (`tarfile`, ...) may already be gone, and an `except`
  clause naming them would raise then ("Exception ignored in: <generator ...>")."""
  try:
    file = epath.Path(shard).open("rb")
  except _READ_ERRORS as err:
    file, failure = None, _read_failed(shard, err)
  if file is None:
    yield failure
    return
  with file:  # a tar streaming from `file` needs nothing else closed
    try:
      tar, failure = tarfile.open(fileobj=file, mode="r|*"), None
    except _READ_ERRORS as err:
      failure = _read_failed(shard, err)
    while failure is None:
      try:
        member = _next_file(tar)
      except _READ_ERRORS as err:
        failure = _read_failed(shard, err)
        break
      if member is None:
        return
      yield member
  yield failure


def _read_failed(shard: str, err: Exception) -> dict:
  logging.warning("skipping (the rest of) tar shard %s: %r", shard, err)
  return quality.tombstone("unreadable_shard", shard)


def read_shard(shard: str):
  """Yields one record per sample key of a tar shard, in file order (members of one sample
  are adjacent, as img2dataset writes them): the sample or its tombstone. A shard that
  cannot be opened, or breaks off, ends with an 'unreadable_shard' tombstone (the
  sample being read is lost with the rest of the shard)."""
  key, members = None, {}
  for member in _file_members(shard):
    if isinstance(member, dict):  # the reader failed
      yield member
      return
    name, data = member
    member_key, extension = _split_name(name)
    if member_key != key:
      if key is not None:
        yield _sample(key, members)
      key, members = member_key, {}
    members[extension] = data
  if key is not None:
    yield _sample(key, members)


def read_samples(shard: str):
  """The complete samples of one tar shard, in file order."""
  return (r for r in read_shard(shard) if "skipped" not in r)


class TarSampleDataset(grain.IterDataset):
  """Endless stream of {'image': encoded bytes, 'text', 'key'} over the given shards,
  with tombstones for broken samples and unreadable shards."""

  def __init__(self, shards: list[str], seed: int):
    super().__init__()
    self._shards = list(shards)
    self._seed = seed

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Called by `mp_prefetch`: each worker process streams a subset of the shards (whole
    shards are the unit, so interleaved and sequential slicing are both partitions)."""
    del sequential_slice
    self._shards = self._shards[sl]
    if not self._shards:
      raise ValueError("more grain workers than tar shards on this host")

  def __iter__(self) -> grain.DatasetIterator:
    return _TarSampleIterator(self._shards, self._seed)

  def __str__(self) -> str:
    return f"TarSampleDataset({len(self._shards)} shards)"


class _TarSampleIterator(grain.DatasetIterator):
  """State: epoch, position in that epoch's shard order, records read from that shard."""

  def __init__(self, shards: list[str], seed: int):
    super().__init__()
    self._shards = shards
    self._seed = seed
    self._epoch = self._shard_pos = self._sample_pos = 0
    self._samples = None  # generator over the current shard, opened lazily
    self._empty_shards_in_a_row = 0
    self._shard_had_sample = False

  def _open_current_shard(self):
    order = np.random.default_rng([self._seed, self._epoch]).permutation(len(self._shards))
    samples = read_shard(self._shards[order[self._shard_pos]])
    for _ in range(self._sample_pos):  # resuming mid-shard: skip what was already seen
      next(samples)
    self._shard_had_sample = self._sample_pos > 0
    return samples

  def __next__(self) -> dict:
    while True:
      if self._samples is None:
        self._samples = self._open_current_shard()
      sample = next(self._samples, None)
      if sample is not None:
        self._sample_pos += 1
        if "skipped" not in sample:
          self._shard_had_sample = True
          self._empty_shards_in_a_row = 0
        return sample
      if not self._shard_had_sample:
        self._empty_shards_in_a_row += 1
        if self._empty_shards_in_a_row >= len(self._shards):  # a whole cycle
          raise ValueError(f"no complete image-text sample in shards {self._shards}")
      self._samples = None
      self._sample_pos = 0
      self._shard_pos += 1
      if self._shard_pos == len(self._shards):
        self._epoch, self._shard_pos = self._epoch + 1, 0

  def get_state(self) -> dict:
    return {"epoch": self._epoch, "shard_pos": self._shard_pos,
            "sample_pos": self._sample_pos}

  def set_state(self, state: dict) -> None:
    self._epoch = state["epoch"]
    self._shard_pos = state["shard_pos"]
    self._sample_pos = state["sample_pos"]
    self._samples = None
    self._empty_shards_in_a_row = 0
