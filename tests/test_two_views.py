"""The 'two_views' batch format (ExtreMA): colour jitter and grayscale against NumPy
references, their probabilities, one shared crop for both views, determinism."""
import grain
import numpy as np
import pytest
from PIL import Image

from data_testing import SIZE, make_config, take
from flip_jax import data
from flip_jax.data import pipeline, transforms

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (12, 10, 3)).astype(np.uint8)
NONE = [None, None, None, None]


def luma(image):
  return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def test_grayscale_is_gray_and_luma():
  gray = transforms.grayscale(IMAGE)
  assert gray.shape == IMAGE.shape and gray.dtype == np.uint8
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  np.testing.assert_allclose(gray[..., 0], luma(IMAGE), atol=0.5 + 1e-6)


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_brightness_contrast_saturation_match_numpy(factor):
  x = IMAGE.astype(np.float64)
  gray = np.asarray(Image.fromarray(IMAGE).convert("L"), np.float64)
  mean = int(gray.mean() + 0.5)
  references = {0: x * factor,                                   # blend with black
                1: mean + factor * (x - mean),                   # with the mean gray
                2: gray[..., None] + factor * (x - gray[..., None])}  # with the luma image
  for op, ref in references.items():
    factors = list(NONE)
    factors[op] = factor
    out = transforms.color_jitter(IMAGE, factors, range(4))
    np.testing.assert_allclose(out, np.clip(ref, 0, 255), atol=1.0)


def test_hue_rotates_the_colour_wheel():
  red = np.zeros((2, 2, 3), np.uint8)
  red[..., 0] = 255
  np.testing.assert_array_equal(transforms.color_jitter(red, [None, None, None, 1 / 3],
                                                        [3])[0, 0], [0, 255, 0])
  np.testing.assert_array_equal(transforms.color_jitter(red, [None, None, None, 0.0],
                                                        [3])[0, 0], [255, 0, 0])


def test_jitter_order_matters_and_is_followed():
  factors = [1.5, 0.3, None, None]
  a = transforms.color_jitter(IMAGE, factors, [0, 1])
  b = transforms.color_jitter(IMAGE, factors, [1, 0])
  step = transforms.color_jitter(IMAGE, [1.5, None, None, None], [0])
  np.testing.assert_array_equal(a, transforms.color_jitter(step, [None, 0.3, None, None], [1]))
  assert not np.array_equal(a, b)


@pytest.mark.parametrize("p", [0.0, 0.8, 1.0])
def test_jitter_probability(p):
  jitter = transforms.RandomColorJitter((0.4, 0.4, 0.2, 0.1), p)
  n = 1000
  changed = sum(not np.array_equal(jitter.random_map({"image": IMAGE},
                                                     np.random.default_rng(i))["image"], IMAGE)
                for i in range(n))
  assert abs(changed / n - p) < 0.04  # binomial sd at p 0.8: 0.013


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_grayscale_probability(p):
  gray = transforms.RandomGrayscale(p)
  n = 1000
  hits = sum(np.array_equal(gray.random_map({"image": IMAGE}, np.random.default_rng(i))["image"],
                            transforms.grayscale(IMAGE)) for i in range(n))
  assert abs(hits / n - p) < 0.04


def test_random_transforms_are_deterministic_given_the_rng_and_touch_only_their_key():
  jitter = transforms.RandomColorJitter((0.4, 0.4, 0.2, 0.1), 1.0, key="image2")
  record = {"image": IMAGE, "image2": IMAGE}
  a = jitter.random_map(record, np.random.default_rng(7))
  b = jitter.random_map(record, np.random.default_rng(7))
  np.testing.assert_array_equal(a["image2"], b["image2"])
  assert a["image"] is IMAGE and not np.array_equal(a["image2"], IMAGE)


def two_view_config(**data_overrides):
  c = make_config(**{"format": "two_views", "rrc_area": (0.2, 1.0), **data_overrides})
  c.tokenizer = ""
  return c


def test_two_views_share_the_crop():
  """With the colour transforms off the views are bit-identical: one crop and flip."""
  batch = next(data.build_train(two_view_config(color_jitter_p=0.0, grayscale_p=0.0), None))
  assert set(batch) == {"image", "image2"}
  assert batch["image"].shape == (16, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["image"], batch["image2"])


def test_two_views_jitter_each_view_independently():
  c = two_view_config(color_jitter_p=1.0, grayscale_p=0.0)
  batches = take(data.build_train(c, None), 2)
  for b in batches:
    differ = [not np.array_equal(b["image"][i], b["image2"][i]) for i in range(16)]
    assert sum(differ) >= 14  # independent factors per view
  again = take(data.build_train(c, None), 2)
  for x, y in zip(batches, again):
    for key in ("image", "image2"):
      np.testing.assert_array_equal(x[key], y[key])


def test_two_views_eval_view_is_the_centre_crop_twice():
  c = two_view_config()
  batches = pipeline.build_eval_batches(c, None, dataset="digits", split="test", batch_size=16)
  images, _ = data.digits.load_split("test")
  np.testing.assert_array_equal(batches[0]["image"][0],
                                transforms.resize_center_crop(images[0], SIZE))
  for b in batches:
    np.testing.assert_array_equal(b["image"], b["image2"])


def test_two_views_random_maps_on_a_grain_dataset_resume():
  c = two_view_config()
  it = data.build_train(c, None)
  take(it, 2)
  state = it.get_state()
  expected = next(it)
  it2 = data.build_train(c, None)
  it2.set_state(state)
  got = next(it2)
  for key in ("image", "image2"):
    np.testing.assert_array_equal(expected[key], got[key])
  assert isinstance(it, grain.DatasetIterator)
