"""Zero-shot classification data held in memory: the digits held-out split, or a small
TFDS classification dataset, preprocessed like training images minus the augmentation.
"""
import numpy as np

from flip_jax.data import digits
from flip_jax.data import transforms

# Generic prompts for TFDS classification datasets (digits brings its own).
GENERIC_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")


def _tfds_split(config, split):
  # TensorFlow Datasets is slow to import; only TFDS evaluation needs it.
  from flip_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  data = config.data
  source = tfds_source.data_source(data.eval_dataset, split, data.eval_data_dir)
  records = [source[i] for i in range(len(source))]
  images = [tfds_source.nested_get(r, data.image_key) for r in records]
  labels = np.asarray([tfds_source.nested_get(r, data.label_key) for r in records],
                      np.int32)
  names = tfds_source.class_names(data.eval_dataset, data.eval_data_dir, data.label_key)
  return images, labels, names, GENERIC_TEMPLATES


def build_eval_classification(config, split: str = "test"):
  """(images float32 [N, S, S, 3], labels int32 [N], class_names, templates).

  `config.data.eval_dataset` is 'digits' or a TFDS name (read from
  `config.data.eval_data_dir`, features `config.data.image_key` / `label_key`). Images
  are resized (shorter side) and centre-cropped to config.image_size, then normalised
  with config.data.mean/std. The whole split is loaded: meant for small eval sets.
  """
  if config.data.eval_dataset == "digits":
    images, labels = digits.load_split(split)
    names, templates = digits.CLASS_NAMES, digits.ZERO_SHOT_TEMPLATES
  else:
    images, labels, names, templates = _tfds_split(config, split)
  views = np.stack([transforms.resize_center_crop(transforms.to_rgb(image),
                                                  config.image_size)
                    for image in images])
  return (transforms.normalize(views, config.data.mean, config.data.std), labels,
          tuple(names), tuple(templates))
