import jax
import numpy as np
import pytest

from flip_jax import masking


@pytest.mark.parametrize("ratio,expected", [(0.0, 196), (0.5, 98), (0.75, 49), (0.9, 19)])
def test_exact_kept_count(ratio, expected):
  keep, restore, mask = masking.random_keep_indices(jax.random.key(0), 6, 196, ratio)
  assert keep.shape == (6, expected)
  np.testing.assert_array_equal(np.asarray(mask).sum(1), 196 - expected)
  for b in range(6):  # kept indices are distinct and exactly the unmasked positions
    assert len(set(np.asarray(keep[b]).tolist())) == expected
    assert set(np.flatnonzero(~np.asarray(mask[b]))) == set(np.asarray(keep[b]).tolist())
  # ids_restore inverts the shuffle: kept token i sits at restore position i
  restore = np.asarray(restore)
  assert (np.sort(restore, 1) == np.arange(196)).all()
  np.testing.assert_array_equal(np.take_along_axis(restore, np.asarray(keep), 1),
                                np.broadcast_to(np.arange(expected), (6, expected)))


def test_independent_per_sample_and_key():
  keep, _, _ = masking.random_keep_indices(jax.random.key(1), 64, 64, 0.5)
  keep = np.asarray(keep)
  sets = {tuple(sorted(k)) for k in keep}
  assert len(sets) == 64  # all samples differ
  other, _, _ = masking.random_keep_indices(jax.random.key(2), 64, 64, 0.5)
  assert not np.array_equal(keep, np.asarray(other))
  same, _, _ = masking.random_keep_indices(jax.random.key(1), 64, 64, 0.5)
  np.testing.assert_array_equal(keep, np.asarray(same))
  # each position is kept about half the time across samples
  counts = np.bincount(keep.ravel(), minlength=64)
  assert counts.min() > 10 and counts.max() < 54


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio):
  with pytest.raises(ValueError, match="mask_ratio"):
    masking.random_keep_indices(jax.random.key(0), 2, 16, ratio)
