"""Input pipelines (grain): training batches, and the held-out batches of `val_loss`.

The trainer calls `get_tokenizer` and `build_train` (evaluation sets are read by
`flip_jax.evaluate.datasets`); the train iterator is a grain `DatasetIterator`, saved
with the train state through Orbax (`grain.checkpoint.CheckpointHandler`, args
`grain.checkpoint.CheckpointSave/Restore`).
Imports nothing from models/, objectives/ or train.py.
"""
from flip_jax.data.digits import CLASS_NAMES
from flip_jax.data.digits import ZERO_SHOT_TEMPLATES
from flip_jax.data.pipeline import build_train
from flip_jax.data.tokenizer import get_tokenizer

__all__ = ["build_train", "get_tokenizer", "CLASS_NAMES", "ZERO_SHOT_TEMPLATES"]
