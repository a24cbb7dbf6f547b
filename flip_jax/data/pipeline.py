"""The training input pipeline: this host's records -> shuffle -> augment -> local batches,
as a checkpointable grain `DatasetIterator`.

What a batch holds is `config.data.format`, a name in `FORMATS`: each format says how a
decoded record is augmented and how a batch of them is finished (tokenised; images stay uint8 for the device).
Objectives name the format they train on; this package knows none of them.
"""
import dataclasses
import os
from typing import Callable

import grain
import numpy as np

from flip_jax.data import quality
from flip_jax.data import sources
from flip_jax.data import transforms


def _host_seed(seed: int, process_index: int) -> int:
  """Hosts read different data but should not share augmentation streams either."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def random_crop(config) -> transforms.RandomResizedCrop:
  """Every training format's first augmentation (config.data.rrc_area / rrc_ratio); the
  pipeline fuses it with decoding (see data/quality.py)."""
  return transforms.RandomResizedCrop(config.image_size, config.data.rrc_area,
                                      config.data.rrc_ratio)


def flip(records, config):
  """The optional horizontal flip."""
  return records.random_map(transforms.RandomFlip()) if config.data.flip else records


@dataclasses.dataclass(frozen=True)
class BatchFormat:
  """How decoded records become batches of one kind.

  augment(records, config) -> records: the random training views of records already
  decoded and cropped (`random_crop`);
  view(records, config) -> records: the deterministic evaluation view (validation loss);
  finish(config, tokenizer) -> a grain Map applied to each batch (tokenise), or None.
  Images stay uint8 [b, S, S, 3] in every format: the train step normalises them on the
  device (`Objective.prepare`).
  """
  augment: Callable
  view: Callable
  finish: Callable | None = None
  needs_tokenizer: bool = False


def _center(records, config):
  return records.map(transforms.CenterCrop(config.image_size))


def two_views(records, config):
  """One shared crop and flip, then independent colour jitter and grayscale per view
  (ExtreMA's spatially consistent colour augmentation)."""
  d = config.data
  records = flip(records.map(transforms.Select(("image",))), config)
  records = records.map(transforms.CopyField("image", "image2"))
  for key in ("image", "image2"):
    records = records.random_map(
        transforms.RandomColorJitter(d.color_jitter, d.color_jitter_p, key))
    records = records.random_map(transforms.RandomGrayscale(d.grayscale_p, key))
  return records


FORMATS: dict[str, BatchFormat] = {
    # {'image': uint8 [b, S, S, 3], 'text': int32 [b, text_len]} (CLIP/FLIP)
    "image_text": BatchFormat(
        augment=lambda r, c: flip(r.random_map(transforms.PickCaption()), c),
        view=lambda r, c: _center(r.map(transforms.FirstCaption()), c),
        finish=lambda c, tok: transforms.TokenizeCaptions(tok),
        needs_tokenizer=True),
    # {'image': uint8 [b, S, S, 3]} (masked image modeling)
    "image": BatchFormat(
        augment=lambda r, c: flip(r.map(transforms.Select(("image",))), c),
        view=lambda r, c: _center(r.map(transforms.Select(("image",))), c)),
    # {'image': uint8 [b, S, S, 3], 'label': int32 [b]} (supervised fine-tuning)
    "image_label": BatchFormat(
        augment=lambda r, c: flip(r.map(transforms.Select(("image", "label"))), c),
        view=lambda r, c: _center(r.map(transforms.Select(("image", "label"))), c)),
    # {'image', 'image2': uint8 [b, S, S, 3]}: two views of one crop (ExtreMA); the
    # evaluation view is the centre crop twice.
    "two_views": BatchFormat(
        augment=two_views,
        view=lambda r, c: _center(r.map(transforms.Select(("image",))), c).map(
            transforms.CopyField("image", "image2"))),
}


def _augment(records, config):
  """Decoded, cropped, augmented training records; broken ones are skipped and counted
  (see data/quality.py: for a MapDataset, by the SkipAndCount that build_train adds)."""
  augment = FORMATS[config.data.format].augment
  return quality.decode_and_augment(records, random_crop(config),
                                    lambda r: augment(r, config),
                                    config.data.max_image_pixels)


def build_train(config, tokenizer, *, process_index: int = 0,
                process_count: int = 1) -> grain.DatasetIterator:
  """Endless iterator of batches in `config.data.format` (see FORMATS).

  b = config.batch_size // process_count: this host's share of the global batch, read
  from this host's slice of the data only. Epochs repeat with a fresh shuffle; everything
  random derives from config.seed. `get_state()` / `set_state()` (or Orbax via
  `grain.checkpoint.CheckpointHandler`) resume at exactly the next batch.
  """
  if config.data.format not in FORMATS:
    raise ValueError(f"config.data.format: {config.data.format!r} not in {sorted(FORMATS)}")
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} not divisible by {process_count} hosts")
  local_batch = config.batch_size // process_count
  seed = _host_seed(config.seed, process_index)
  records = sources.host_records(config, process_index, process_count, seed)
  if isinstance(records, grain.MapDataset):
    records = _augment(records.seed(seed).shuffle().repeat(), config)
    # Threads overlap PIL decode/resize (which release the GIL) within each process.
    records = quality.SkipAndCount(records.to_iter_dataset(grain.ReadOptions(
        num_threads=min(16, os.cpu_count() or 1), prefetch_buffer_size=local_batch)))
  else:
    records = grain.experimental.WindowShuffleIterDataset(
        records, window_size=config.data.shuffle_buffer, seed=seed)
    records = _augment(records.seed(seed), config)
  batches = _finish(records.batch(local_batch, drop_remainder=True), config, tokenizer)
  if config.data.num_workers > 0:
    batches = batches.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(batches)


def build_eval_batches(config, tokenizer, *, dataset: str = "digits", split: str = "test",
                       data_dir: str = "", batch_size: int) -> grain.MapDataset:
  """Every full batch of a held-out split in `config.data.format`, deterministic (the
  format's evaluation view, storage order, no shuffle); the remainder is dropped so each
  batch has the training batch's shape (the contrastive loss depends on it).

  A lazy grain `MapDataset` (sized, indexable, re-iterable): every pass decodes the batches
  again, so host memory holds one batch, not the split (ImageNet val at 192 px would be
  ~22 GB)."""
  fmt = FORMATS[config.data.format]
  records = sources.named_records(config, dataset, split, data_dir)
  records = fmt.view(records.map(transforms.DecodeImage()), config)
  return _finish(records.batch(batch_size, drop_remainder=True), config, tokenizer)


def _finish(batches, config, tokenizer):
  finish = FORMATS[config.data.format].finish
  return batches.map(finish(config, tokenizer)) if finish else batches
