"""Text to fixed-length int32 ids, BERT style ([CLS] first so the text tower can pool at
token 0, [SEP] last, lower-case WordPiece), from a local tokenizer.json, a hub name, or a
WordPiece vocab learned from the digits captions and saved in the workdir so that resumed
runs and evaluation reuse exactly the same vocab.

`config.model.text.special_tokens=False` drops the template: word pieces only, truncated
and padded with [PAD] (official FLIP: tf_text's BertTokenizer adds no [CLS]/[SEP] and
`aug.txt.cls_token=False` adds no [CLS] either).
"""
import os
import socket

import numpy as np
import tokenizers
from etils import epath
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from flip_jax.data import digits

DIGITS_SPEC = "wordpiece:digits"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>")  # OpenAI CLIP pads with its EOS
_EOS_TOKENS = ("[SEP]", "</s>", "<|endoftext|>")


class TextTokenizer:
  """Wraps a `tokenizers.Tokenizer`: pads/truncates to `text_len`, keeping [SEP] last;
  special_tokens=False removes the post-processor (no template, and `to_str` says so)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, text_len: int, special_tokens: bool = True):
    self.pad_id = _first_token_id(tokenizer, _PAD_TOKENS)
    self.eos_id = _first_token_id(tokenizer, _EOS_TOKENS)
    self.vocab_size = tokenizer.get_vocab_size()
    self.text_len = text_len
    if not special_tokens:
      tokenizer.post_processor = None
    tokenizer.enable_truncation(max_length=text_len)
    tokenizer.enable_padding(length=text_len, pad_id=self.pad_id,
                             pad_token=tokenizer.id_to_token(self.pad_id))
    self._tokenizer = tokenizer

  def encode(self, texts) -> np.ndarray:
    """int32 [len(texts), text_len] token ids."""
    ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
    return np.asarray(ids, np.int32).reshape(len(ids), self.text_len)

  def decode(self, ids) -> list[str]:
    """Texts back from ids (special tokens dropped), for logs and tests."""
    return self._tokenizer.decode_batch([list(map(int, row)) for row in ids])

  def to_str(self) -> str:
    """tokenizer.json text, to ship beside exported weights (it reloads to the same ids)."""
    return self._tokenizer.to_str()


def _first_token_id(tokenizer: tokenizers.Tokenizer, candidates) -> int:
  for token in candidates:
    if (token_id := tokenizer.token_to_id(token)) is not None:
      return token_id
  raise ValueError(f"tokenizer has none of the special tokens {candidates}")


def build_digits_wordpiece() -> tokenizers.Tokenizer:
  """`build_wordpiece` of `digits.all_texts()`."""
  return build_wordpiece(digits.all_texts())


def build_wordpiece(texts) -> tokenizers.Tokenizer:
  """A lower-case BERT-style WordPiece tokenizer (bert-base-uncased's normaliser,
  pre-tokeniser, [CLS] ... [SEP] template and decoder) whose vocab is learned from
  `texts`: every corpus word whole, plus its characters as fallback pieces.

  This is the vocab `tokenizers.trainers.WordPieceTrainer` converges to when the vocab
  size is not binding, minus the intermediate sub-words, which that trainer picks by
  breaking ties in hash-map order: it gave 18 different vocabs in 20 runs, and a vocab
  must not change between a run, its resumption and its evaluation.
  """
  normalizer = normalizers.BertNormalizer(lowercase=True)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  words = sorted({word for text in texts
                  for word, _ in pre_tokenizer.pre_tokenize_str(
                      normalizer.normalize_str(text))})
  chars = sorted({char for word in words for char in word})
  pieces = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
  pieces += [word for word in words if word not in chars]
  tokenizer = tokenizers.Tokenizer(models.WordPiece(
      {piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
  tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # same ids; never split, skipped by decode
  tokenizer.normalizer = normalizer
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.decoder = decoders.WordPiece()
  cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
  return tokenizer


def _load_or_build_digits(workdir) -> tokenizers.Tokenizer:
  path = epath.Path(workdir) / "tokenizer.json"
  if path.exists():
    return tokenizers.Tokenizer.from_str(path.read_text())
  tokenizer = build_digits_wordpiece()
  path.parent.mkdir(parents=True, exist_ok=True)
  # Every host of a multi-host run gets here at once: write-then-rename, so none reads a
  # half-written file (the build is deterministic, so whichever rename wins is the same).
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{socket.gethostname()}"
  tmp.write_text(tokenizer.to_str())
  tmp.replace(path)
  return tokenizer


def _load_from_hub(name: str) -> tokenizers.Tokenizer:
  # transformers is slow to import and only this path (machines with internet) needs it.
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.AutoTokenizer.from_pretrained(name).backend_tokenizer


def local_file(spec: str) -> str | None:
  """The tokenizer.json that `spec` names, if it is here without a download: the file, a
  directory holding one, or the Hugging Face cache's copy of a hub tokenizer."""
  path = epath.Path(spec)
  if path.exists():
    return str(path / "tokenizer.json" if path.is_dir() else path)
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    cached = huggingface_hub.try_to_load_from_cache(spec, "tokenizer.json")
  except ValueError:  # not a hub name
    return None
  return cached if isinstance(cached, str) else None


def get_tokenizer(config, workdir) -> TextTokenizer:
  """The tokenizer named by `config.tokenizer`, producing `config.text_len` ids.

  `config.tokenizer` is a tokenizer.json file, a directory holding one, 'wordpiece:digits'
  (built once, then reloaded from `workdir/tokenizer.json`), or a Hugging Face hub name.
  """
  spec = config.tokenizer
  if spec == DIGITS_SPEC:
    tokenizer = _load_or_build_digits(workdir)
  elif (path := epath.Path(spec)).exists():
    file = path / "tokenizer.json" if path.is_dir() else path
    tokenizer = tokenizers.Tokenizer.from_str(file.read_text())
  else:
    tokenizer = _load_from_hub(spec)
  return TextTokenizer(tokenizer, config.text_len,
                       special_tokens=config.model.text.special_tokens)
