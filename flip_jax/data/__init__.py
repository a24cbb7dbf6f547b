"""Input pipelines (grain): image-text training batches and zero-shot evaluation sets.

The trainer calls `get_tokenizer`, `build_train` and `build_eval_classification`; the
train iterator is a grain `DatasetIterator`, saved with the train state through Orbax
(`grain.checkpoint.CheckpointHandler`, args `grain.checkpoint.CheckpointSave/Restore`).
Imports nothing from models/, objectives/ or train.py.
"""
from flip_jax.data.classification import build_eval_classification
from flip_jax.data.digits import CLASS_NAMES
from flip_jax.data.digits import ZERO_SHOT_TEMPLATES
from flip_jax.data.pipeline import build_train
from flip_jax.data.tokenizer import get_tokenizer

__all__ = ["build_train", "build_eval_classification", "get_tokenizer", "CLASS_NAMES",
           "ZERO_SHOT_TEMPLATES"]
