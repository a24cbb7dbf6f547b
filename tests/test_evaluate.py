"""Evaluators with known answers: retrieval ranks on hand-made similarity matrices (ties,
5 captions per image), zero-shot and retrieval on digits and on a TFDS dataset written
here with oracle features, kNN against a brute-force NumPy kNN, the linear probe on raw
pixels, and bad inputs (missing dataset, wrong class-name file, unknown key) failing
before any model work."""
import jax
import numpy as np
import pytest
from flax import nnx

from flip_jax import config_check, sharding, train
from flip_jax import evaluate
from flip_jax.data import digits, transforms
from flip_jax.evaluate import datasets, knn, retrieval, templates
from data_testing import DigitsTfds
from helpers import tiny_flip_config

# ---- retrieval ranks -------------------------------------------------------------------


def test_first_positive_rank_breaks_ties_by_index():
  scores = np.array([[0.5, 0.5, 0.5, 0.5, 0.5],   # all tied: first positive by index
                     [0.5, 0.5, 0.5, 0.5, 0.5],
                     [1.0, 1.0, 0.0, 0.0, 0.0],   # negative 0 ties positive 1, ranks first
                     [1.0, 1.0, 0.0, 0.0, 0.0],   # positive 0 ties negative 1
                     [0.1, 0.9, 0.3, 0.8, 0.3]])  # best positive 4 (0.3) after 1, 3, 2
  positives = np.zeros((5, 5), bool)
  positives[0, 3] = True
  positives[1, [4, 2]] = True
  positives[2, 1] = True
  positives[3, 0] = True
  positives[4, [0, 4]] = True
  np.testing.assert_array_equal(retrieval.first_positive_ranks(scores, positives),
                                [3, 2, 1, 0, 3])


def test_retrieval_metrics_on_a_hand_made_matrix_with_five_captions_per_image():
  # 3 images x 5 captions (text t belongs to image t // 5); see the comments for ranks.
  s = np.zeros((3, 15))
  s[0, :5] = [0.9, 0.1, 0.1, 0.1, 0.1]  # own caption 0 first: rank 0
  s[1, :5], s[1, 5:] = 0.5, 0.2         # image 0's five lead; own text 5 wins the tie: 5
  s[2, :5], s[2, 5:10], s[2, 10:] = 0.3, 0.9, 0.3  # 5 ahead, 5 tied with lower index: 10
  positives = np.kron(np.eye(3, dtype=bool), np.ones((1, 5), bool))
  i2t = retrieval.first_positive_ranks(s, positives)
  np.testing.assert_array_equal(i2t, [0, 5, 10])
  assert retrieval.recall_at(i2t, (1, 5, 10)) == {1: 1 / 3, 5: 1 / 3, 10: 2 / 3}
  # text -> image: text 0 [.9 .5 .3] -> 0; texts 1-4 [.1 .5 .3] -> 2; texts 5-9
  # [0 .2 .9] -> 1; texts 10-14 [0 .2 .3] -> 0
  t2i = retrieval.first_positive_ranks(s.T, positives.T)
  np.testing.assert_array_equal(t2i, [0, 2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
  assert retrieval.recall_at(t2i, (1, 5, 10)) == {1: 6 / 15, 5: 1.0, 10: 1.0}


def test_retrieval_ranks_match_a_sort_on_random_scores_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, (40, 30)).astype(np.float32)  # many ties
  positives = rng.random((40, 30)) < 0.1
  positives[np.arange(40), rng.integers(0, 30, 40)] = True
  expected = []
  for row, pos in zip(scores, positives):
    order = sorted(range(30), key=lambda j: (-row[j], j))
    expected.append(min(order.index(j) for j in np.flatnonzero(pos)))
  np.testing.assert_array_equal(retrieval.first_positive_ranks(scores, positives), expected)


def test_identical_captions_merge_into_one_text():
  captions = [("a", "b"), ("a", "c")]
  texts, pos = retrieval.texts_and_positives(captions, merge_duplicates=True)
  assert texts == ["a", "b", "c"]
  np.testing.assert_array_equal(pos, [[1, 1, 0], [1, 0, 1]])
  texts, pos = retrieval.texts_and_positives(captions, merge_duplicates=False)
  assert texts == ["a", "b", "a", "c"]
  np.testing.assert_array_equal(pos, [[1, 1, 0, 0], [0, 0, 1, 1]])


# ---- oracle features: answers known in advance ---------------------------------------


class OracleFeatures:
  """Stands in for `Features`: looks each input row up in a table of embeddings."""

  def __init__(self, image_rows, image_emb, token_rows, text_emb):
    self._image = {r.tobytes(): e for r, e in zip(image_rows, image_emb)}
    self._text = {r.tobytes(): e for r, e in zip(token_rows, text_emb)}

  def image(self, images, kind: str = ""):
    del kind  # one representation: the table's
    rows = images[np.arange(len(images))]
    return np.stack([self._image[r.tobytes()] for r in rows])

  def text(self, tokens):
    return np.stack([self._text[r.tobytes()] for r in np.asarray(tokens)])


def class_oracle(sets, tokenizer, image_emb_of_label=None):
  """Images of the `datasets.Labelled`-like `sets` embed as their label's one-hot (or
  `image_emb_of_label`), every digits caption and zero-shot prompt as its class's."""
  eye = np.eye(10, dtype=np.float32)
  texts, classes = [], []
  for label, name in enumerate(digits.CLASS_NAMES):
    for text in digits.captions(label) + tuple(t.replace("{}", name)
                                               for t in digits.ZERO_SHOT_TEMPLATES):
      texts.append(text)
      classes.append(label)
  emb = image_emb_of_label if image_emb_of_label is not None else eye
  rows = np.concatenate([s.images[np.arange(len(s.images))] for s in sets])
  labels = np.concatenate([s.labels for s in sets])
  return OracleFeatures(rows, emb[labels], tokenizer.encode(texts), eye[classes])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir holding the digits WordPiece tokenizer (as a training run leaves it)."""
  path = tmp_path_factory.mktemp("workdir")
  train.resolve_tokenizer(tiny_flip_config(), str(path))
  return str(path)


def digits_config(**evals):
  c = tiny_flip_config()
  c.text_len = 16  # 8 would cut the longer captions to the same tokens for every class
  c.evals = evals
  return c


def test_zeroshot_on_oracle_features(workdir):
  c = digits_config(z=dict(type="zeroshot"))
  (ev,) = evaluate.build(c, workdir)
  assert ev.templates == digits.ZERO_SHOT_TEMPLATES and ev.class_names == digits.CLASS_NAMES
  labels = ev.data.labels
  emb = np.eye(10, dtype=np.float32)
  emb[3] = 0.4 * emb[3] + 0.6 * emb[5]  # every 3 looks more like a 5, then like a 3
  oracle = class_oracle([ev.data], ev.tokenizer, emb)
  assert evaluate.run(ev, oracle) == {"top1": 1 - float(np.mean(labels == 3)), "top5": 1.0}


def digits_labelled(captioned):
  """A captioned digits set with its labels (recovered from the captions)."""
  first = [digits.captions(label)[0] for label in range(10)]
  return datasets.Labelled(captioned.images,
                           np.array([first.index(c[0]) for c in captioned.captions]), None)


def test_retrieval_on_digits_with_oracle_features(workdir):
  c = digits_config(merged=dict(type="retrieval"),
                    per_caption=dict(type="retrieval", merge_duplicates=False))
  merged, per_caption = sorted(evaluate.build(c, workdir), key=lambda ev: ev.name)
  labels = digits_labelled(merged.data).labels
  oracle = class_oracle([digits_labelled(merged.data)], merged.tokenizer)
  assert len(merged.texts) == 60  # 10 classes x 6 captions, each shared by its class
  assert set(evaluate.run(merged, oracle).values()) == {1.0}
  # One text per caption: an image's captions tie with those of every image of its class,
  # so the m-th image of a class (storage order) ranks its first caption at 6 m.
  m = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])
  results = evaluate.run(per_caption, oracle)
  for k in (1, 5, 10):
    assert results[f"i2t_r{k}"] == float(np.mean(6 * m < k))
  # each caption's best image is the first of its class; its own image is m later
  t2i = np.repeat(m, 6)
  for k in (1, 5, 10):
    assert results[f"t2i_r{k}"] == float(np.mean(t2i < k))


# ---- kNN and the linear probe ---------------------------------------------------------


def brute_force_knn(test, train_x, train_labels, num_classes, k, temperature):
  """Per test row: cosine to every training row, the k largest (ties: lower index), votes
  exp(sim / T) per class. Plain NumPy, one row at a time."""
  train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  votes = np.zeros((len(test), num_classes))
  for i, q in enumerate(test):
    sims = train_n @ (q / np.linalg.norm(q))
    top = np.lexsort((np.arange(len(sims)), -sims))[:k]
    for j in top:
      votes[i, train_labels[j]] += np.exp(sims[j] / temperature)
  return votes


def test_knn_equals_brute_force_with_ties():
  rng = np.random.default_rng(0)
  train_x = rng.normal(size=(300, 16)).astype(np.float32)
  train_labels = rng.integers(0, 7, 300)
  train_x[10] = train_x[200]  # an exact tie between two labels ...
  train_labels[10], train_labels[200] = 1, 2
  test = rng.normal(size=(50, 16)).astype(np.float32)
  test[0] = train_x[200] * 3  # ... that test row 0 sees first
  got = knn.knn_scores(test, train_x, train_labels, 7, k=20, temperature=0.07)
  want = brute_force_knn(test, train_x, train_labels, 7, 20, 0.07)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_array_equal(np.argsort(-got, kind="stable"),
                                np.argsort(-want, kind="stable"))
  got_k1 = knn.knn_scores(test[:1], train_x, train_labels, 7, k=1, temperature=0.07)
  assert np.argmax(got_k1[0]) == 1  # the lower index of the tied pair


class Identity(nnx.Module):
  """No parameters: features = the input's pixels."""


def pixel_features(mesh):
  graphdef, state = nnx.split(Identity())
  return evaluate.Features(lambda m, x: x.reshape(x.shape[0], -1), None, graphdef, (state,),
                           mesh)


def test_knn_evaluator_on_raw_pixels_equals_brute_force(workdir):
  c = digits_config(knn=dict(type="knn"))
  c.image_size = 8
  (ev,) = evaluate.build(c, workdir)
  results = evaluate.run(ev, pixel_features(sharding.make_mesh({"data": -1})))
  x_train = ev.train.images[np.arange(len(ev.train.labels))].reshape(len(ev.train.labels), -1)
  x_test = ev.test.images[np.arange(len(ev.test.labels))].reshape(len(ev.test.labels), -1)
  votes = brute_force_knn(x_test, x_train, ev.train.labels, 10, 20, 0.07)
  assert results["top1"] == float(np.mean(np.argmax(votes, axis=1) == ev.test.labels))
  assert results["top1"] > 0.9


def test_linear_probe_on_raw_pixels(workdir):
  c = digits_config(probe=dict(type="linear_probe", wd_sweep=(1e-4, 1e-2, 1.0)))
  c.image_size = 8
  (ev,) = evaluate.build(c, workdir)
  results = evaluate.run(ev, pixel_features(sharding.make_mesh({"data": -1})))
  assert results["top1"] >= 0.90
  assert results["wd"] in (1e-4, 1e-2, 1.0) and 0.9 <= results["val_top1"] <= 1.0


# ---- templates -------------------------------------------------------------------------


def test_template_sets(tmp_path):
  assert len(set(templates.CLIP_80)) == 80 and len(templates.CLIP_SHORT) == 7
  assert set(templates.CLIP_SHORT) <= set(templates.CLIP_80)
  assert all(t.count("{}") == 1 for t in templates.CLIP_80)
  path = tmp_path / "prompts.txt"
  path.write_text("a {} here\n\nthe {}.\n")
  assert templates.load(str(path), "k") == ("a {} here", "the {}.")
  path.write_text("no slot\n")
  with pytest.raises(ValueError, match="bad line: 'no slot'"):
    templates.load(str(path), "k")


# ---- a TFDS dataset with a ClassLabel and captions, written here -----------------------


class EvalDigits(DigitsTfds):
  """40 digits a split in TFDS."""

  SPLIT_SIZES = {"train": 40, "test": 40}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return EvalDigits.prepare(tmp_path_factory.mktemp("tfds"))


def test_tfds_sets_class_names_from_metadata_and_captions(tfds_dir, workdir):
  c = digits_config(
      z=dict(type="zeroshot", dataset="eval_digits", data_dir=tfds_dir, templates="digits"),
      r=dict(type="retrieval", dataset="eval_digits", data_dir=tfds_dir),
      k=dict(type="knn", dataset="eval_digits", data_dir=tfds_dir, k=5))
  z, r, k = sorted(evaluate.build(c, workdir), key=lambda ev: "zrk".index(ev.name))
  assert z.class_names == digits.CLASS_NAMES  # from the ClassLabel feature
  images, labels = digits.load_split("test")
  # TFDS shuffles storage order: match records back to digits by their pixels
  by_pixels = {transforms_view(c, im).tobytes(): lab for im, lab in zip(images[:40], labels)}
  stored = z.data.images[np.arange(40)]
  np.testing.assert_array_equal(z.data.labels, [by_pixels[x.tobytes()] for x in stored])
  assert r.data.captions == [digits.captions(int(lab)) for lab in z.data.labels]
  oracle = class_oracle([z.data, k.train], z.tokenizer)
  assert evaluate.run(z, oracle) == {"top1": 1.0, "top5": 1.0}
  assert set(evaluate.run(r, oracle).values()) == {1.0}
  assert evaluate.run(k, oracle)["top1"] == 1.0  # one-hot features: neighbours agree


def transforms_view(config, image):
  from flip_jax.data import transforms
  return transforms.normalize(transforms.resize_center_crop(image, config.image_size),
                              config.data.mean, config.data.std)


# ---- bad inputs: clear errors, before any model work -----------------------------------


def test_missing_tfds_dataset_and_split_are_named(tfds_dir, workdir):
  c = digits_config(z=dict(type="zeroshot", dataset="no_such_set", data_dir=tfds_dir))
  with pytest.raises(datasets.DatasetError,
                     match=r"config.evals.z.dataset: TFDS dataset 'no_such_set' not found"):
    evaluate.build(c, workdir)
  c = digits_config(r=dict(type="retrieval", dataset="eval_digits", data_dir=tfds_dir,
                           split="validation"))
  with pytest.raises(datasets.DatasetError, match=r"config.evals.r.split: .* no split "
                                                  r"'validation'.*\['test', 'train'\]"):
    evaluate.build(c, workdir)
  c = digits_config(v=dict(type="val_loss", dataset="no_such_set", data_dir=tfds_dir))
  with pytest.raises(datasets.DatasetError, match="config.evals.v.dataset"):
    evaluate.build(c, workdir)


def test_class_name_file_of_wrong_length_stops_training_before_model_work(
    tmp_path, workdir, monkeypatch):
  names = tmp_path / "names.txt"
  names.write_text("\n".join(digits.CLASS_NAMES[:9]) + "\n")
  c = digits_config(z=dict(type="zeroshot", class_names_file=str(names)))

  def no_model_work(*args, **kwargs):
    raise AssertionError("the model was built before the evaluators were checked")

  monkeypatch.setattr(train, "Trainer", no_model_work)
  with pytest.raises(datasets.DatasetError,
                     match=f"config.evals.z.class_names_file: {names} has 9 names, the "
                           f"dataset has 10 classes"):
    train.run(c, str(tmp_path / "run"))
  names.write_text("\n".join(f"digit {n}" for n in digits.CLASS_NAMES) + "\n")
  (ev,) = evaluate.build(c, workdir)
  assert ev.class_names[3] == "digit three"


def test_unknown_keys_and_bad_values_fail_config_validation():
  c = digits_config(k=dict(type="knn", temprature=0.1, k=0),
                    z=dict(type="zeroshot", templates="clip81"),
                    p=dict(type="linear_probe", val_fraction=1.5),
                    v=dict(type="val_loss", at_start="yes"))
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(c, jax.device_count())
  message = str(err.value)
  for expected in ("config.evals.k.temprature: unknown key", "config.evals.k.k: must be",
                   "config.evals.z.templates: 'clip81' is neither",
                   "config.evals.p.val_fraction: must be in (0, 1)",
                   "config.evals.v.at_start: must be True or False"):
    assert expected in message


def test_digits_split_must_exist(workdir):
  with pytest.raises(datasets.DatasetError, match="config.evals.k.test_split: digits has"):
    evaluate.build(digits_config(k=dict(type="knn", test_split="val")), workdir)


def test_results_must_be_floats(workdir):
  (ev,) = evaluate.build(digits_config(z=dict(type="zeroshot")), workdir)
  ev.run = lambda features: {"top1": np.float32(0.5)}
  with pytest.raises(TypeError, match="'z' returned float32 for 'top1'"):
    evaluate.run(ev, None)


def test_eval_data_is_the_classification_view(workdir):
  c = digits_config()
  raw, _ = digits.load_split("test")
  expected = np.stack([transforms.normalize(transforms.resize_center_crop(im, c.image_size),
                                            c.data.mean, c.data.std) for im in raw])
  labelled = datasets.labelled(c, dataset="digits", split="test")
  got = labelled.images[np.arange(len(labelled.images))]
  assert got.shape == (360, c.image_size, c.image_size, 3) and got.dtype == np.float32
  np.testing.assert_array_equal(got, expected)
  labels = labelled.labels
  assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))
  assert labelled.class_names == digits.CLASS_NAMES


def test_presets_are_valid_configs():
  from flip_jax.evaluate import presets
  for name, cfg in presets.PRESETS.items():
    assert evaluate.REGISTRY[cfg["type"]].validate(name, cfg) == []
  names = datasets.read_lines(presets.IMAGENET_CLASS_NAMES, "names")
  assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"
