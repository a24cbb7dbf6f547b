"""Zero-shot classification data held in memory: the digits held-out split, or a small
TFDS classification dataset, preprocessed like training images minus the augmentation.
"""
import numpy as np

from flip_jax.data import digits
from flip_jax.data import transforms

# Generic prompts for TFDS classification datasets (digits brings its own).
GENERIC_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")


def _tfds_split(dataset, split, data_dir, image_key, label_key):
  # TensorFlow Datasets is slow to import; only TFDS evaluation needs it.
  from flip_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  source = tfds_source.data_source(dataset, split, data_dir)
  records = [source[i] for i in range(len(source))]
  images = [tfds_source.nested_get(r, image_key) for r in records]
  labels = np.asarray([tfds_source.nested_get(r, label_key) for r in records], np.int32)
  names = tfds_source.class_names(dataset, data_dir, label_key)
  return images, labels, names, GENERIC_TEMPLATES


def build_eval_classification(config, *, dataset: str = "digits", split: str = "test",
                              data_dir: str = "", image_key: str = "image",
                              label_key: str = "label"):
  """(images float32 [N, S, S, 3], labels int32 [N], class_names, templates).

  `dataset` is 'digits' or a TFDS name (read from `data_dir`, features `image_key` /
  `label_key`). Images are resized (shorter side) and centre-cropped to
  config.image_size, then normalised with config.data.mean/std. The whole split is
  loaded: meant for small eval sets.
  """
  if dataset == "digits":
    images, labels = digits.load_split(split)
    names, templates = digits.CLASS_NAMES, digits.ZERO_SHOT_TEMPLATES
  else:
    images, labels, names, templates = _tfds_split(dataset, split, data_dir, image_key,
                                                   label_key)
  views = np.stack([transforms.resize_center_crop(transforms.to_rgb(image),
                                                  config.image_size)
                    for image in images])
  return (transforms.normalize(views, config.data.mean, config.data.std), labels,
          tuple(names), tuple(templates))
