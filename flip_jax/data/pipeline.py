"""The training input pipeline: this host's records -> shuffle -> augment -> local batches
of normalised images and token ids, as a checkpointable grain `DatasetIterator`.
"""
import os

import grain
import numpy as np

from flip_jax.data import sources
from flip_jax.data import transforms


def _host_seed(seed: int, process_index: int) -> int:
  """Hosts read different data but should not share augmentation streams either."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def _augment(records, config):
  records = records.map(transforms.DecodeImage()).random_map(transforms.PickCaption())
  records = records.random_map(transforms.RandomResizedCrop(
      config.image_size, config.data.rrc_area, config.data.rrc_ratio))
  if config.data.flip:
    records = records.random_map(transforms.RandomFlip())
  return records


def build_train(config, tokenizer, *, process_index: int = 0,
                process_count: int = 1) -> grain.DatasetIterator:
  """Endless iterator of {'image': float32 [b, S, S, 3], 'text': int32 [b, text_len]}.

  b = config.batch_size // process_count: this host's share of the global batch, read
  from this host's slice of the data only. Epochs repeat with a fresh shuffle; everything
  random derives from config.seed. `get_state()` / `set_state()` (or Orbax via
  `grain.checkpoint.CheckpointHandler`) resume at exactly the next batch.
  """
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} not divisible by {process_count} hosts")
  local_batch = config.batch_size // process_count
  seed = _host_seed(config.seed, process_index)
  records = sources.host_records(config, process_index, process_count, seed)
  if isinstance(records, grain.MapDataset):
    records = _augment(records.seed(seed).shuffle().repeat(), config)
    # Threads overlap PIL decode/resize (which release the GIL) within each process.
    records = records.to_iter_dataset(grain.ReadOptions(
        num_threads=min(16, os.cpu_count() or 1), prefetch_buffer_size=local_batch))
  else:
    records = grain.experimental.WindowShuffleIterDataset(
        records, window_size=config.data.shuffle_buffer, seed=seed)
    records = _augment(records.seed(seed), config)
  batches = records.batch(local_batch, drop_remainder=True).map(
      transforms.NormalizeAndTokenize(tokenizer, config.data.mean, config.data.std))
  if config.data.num_workers > 0:
    batches = batches.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return iter(batches)
