"""Per-sample and per-batch grain transforms: decode, caption choice, RandomResizedCrop,
flip, colour jitter and grayscale, resize for evaluation, normalisation and tokenisation.

RandomResizedCrop also takes encoded images: a JPEG is then decoded by libjpeg-turbo
(simplejpeg) at the smallest of its DCT scales (n/8) that still leaves the crop at least
the output size on each side, and the crop is resized (bicubic) in one step. The box is
drawn on the full image's size with the same random draws as for an array, so the crop
distribution is the recipe's; only the resampling differs (the DCT's scaling first, where
the crop is at least twice the output size), by a few grey levels.

Random transforms are `grain.transforms.RandomMap`s: grain hands each record an rng derived
from the pipeline seed and the record's position, so augmentation is reproducible and a
restored iterator re-draws exactly the same crops.
"""
import io
import math

import grain
import numpy as np
import simplejpeg
from PIL import Image, ImageEnhance


class ImageTooLarge(ValueError):
  pass


def to_rgb(image, max_pixels: int | None = None) -> np.ndarray:
  """uint8 [H, W, 3] from encoded bytes or an array (grayscale, RGBA, CMYK, 16-bit, ...
  allowed). Encoded images above `max_pixels` raise ImageTooLarge before decoding."""
  if isinstance(image, (bytes, np.bytes_)):
    pil = Image.open(io.BytesIO(image))
    if max_pixels and pil.width * pil.height > max_pixels:
      raise ImageTooLarge(f"{pil.width}x{pil.height} pixels exceed {max_pixels}")
  else:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    pil = Image.fromarray(array)
  if pil.mode.startswith("I;16") or pil.mode == "I":
    # 16-bit grey: keep the high byte (Pillow's convert would clip everything above 255).
    pil = Image.fromarray((np.clip(np.asarray(pil), 0, 65535) >> 8).astype(np.uint8))
  if pil.mode != "RGB":
    pil = pil.convert("RGB")
  return np.asarray(pil)


class DecodeImage(grain.transforms.Map):
  """Source record -> the same record with 'image' as uint8 RGB; the 'key' is dropped."""

  def map(self, record):
    out = {k: v for k, v in record.items() if k != "key"}
    out["image"] = to_rgb(record["image"])
    return out


class Select(grain.transforms.Map):
  """Keeps only these fields of a record."""

  def __init__(self, keys):
    self._keys = tuple(keys)

  def map(self, record):
    return {k: record[k] for k in self._keys}


class PickCaption(grain.transforms.RandomMap):
  """One caption as str: sources give str, bytes, or a list of captions to choose from."""

  def random_map(self, record, rng: np.random.Generator):
    text = record["text"]
    if not isinstance(text, (str, bytes, np.bytes_, np.str_)):
      text = text[rng.integers(len(text))]
    if isinstance(text, (bytes, np.bytes_)):
      text = text.decode("utf-8")
    return {**record, "text": str(text)}


class FirstCaption(grain.transforms.Map):
  """The deterministic counterpart of PickCaption: the first caption, as str."""

  def map(self, record):
    text = record["text"]
    if not isinstance(text, (str, bytes, np.bytes_, np.str_)):
      text = text[0]
    if isinstance(text, (bytes, np.bytes_)):
      text = text.decode("utf-8")
    return {**record, "text": str(text)}


def random_crop_box(height: int, width: int, area_range, ratio_range,
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) as torchvision's RandomResizedCrop draws it: 10 tries at a
  random area fraction and log-uniform aspect ratio, then a centred crop as fallback."""
  area = height * width
  log_ratio = (math.log(ratio_range[0]), math.log(ratio_range[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  aspect = width / height
  if aspect < ratio_range[0]:
    w, h = width, round(width / ratio_range[0])
  elif aspect > ratio_range[1]:
    w, h = round(height * ratio_range[1]), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def resize_box(image: np.ndarray, box, size: int) -> np.ndarray:
  """The (left, top, right, bottom) box of a uint8 image resized (bicubic) to size x size;
  box coordinates may be fractional."""
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box))


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) of a JPEG that libjpeg-turbo decodes to RGB at reduced scale; None
  for anything else (PNG, WebP, CMYK/YCCK JPEGs, bytes that are no image), which Pillow
  decodes."""
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  return None if colorspace in ("CMYK", "YCCK") else (height, width)


def decode_for_crop(data: bytes, size: int, draw_box, max_pixels: int | None = None):
  """(uint8 RGB pixels, box in those pixels' coordinates): an encoded image and the box
  `draw_box(height, width)` draws on its full size (called once). A JPEG is decoded at
  the smallest DCT scale that keeps the box at least `size` px wide and high; other
  formats, and JPEGs that libjpeg-turbo's strict decoding refuses (Pillow then decodes
  them, or raises its error for bad data), are decoded whole by `to_rgb`."""
  header = _jpeg_size(data)
  if header is None:
    image = to_rgb(data, max_pixels)
    return image, draw_box(*image.shape[:2])
  height, width = header
  if max_pixels and width * height > max_pixels:
    raise ImageTooLarge(f"{width}x{height} pixels exceed {max_pixels}")
  if width * height > 2 * (Image.MAX_IMAGE_PIXELS or math.inf):  # as Pillow refuses
    raise Image.DecompressionBombError(f"{width}x{height} pixels")
  left, top, right, bottom = box = draw_box(height, width)
  try:
    pixels = simplejpeg.decode_jpeg(
        data, "rgb", min_height=min(height, math.ceil(size * height / (bottom - top))),
        min_width=min(width, math.ceil(size * width / (right - left))))
  except ValueError:
    return to_rgb(data, max_pixels), box
  scale = _dct_scale(pixels.shape[:2], height, width)
  return pixels, (left * scale, top * scale, right * scale, bottom * scale)


def _dct_scale(shape, height: int, width: int) -> float:
  """The n/8 that libjpeg-turbo scaled by: its output sides are ceil(side * n / 8), so
  shape / side is slightly off n/8 (and the crop box would drift by up to a pixel)."""
  for n in range(1, 9):
    if shape == (-(-height * n // 8), -(-width * n // 8)):
      return n / 8
  raise ValueError(f"decoded {shape} is no n/8 scale of {height}x{width}")


class RandomResizedCrop(grain.transforms.RandomMap):
  """Random area/aspect crop resized (bicubic) to size x size, as in FLIP's recipe, of a
  uint8 image or an encoded one (decoded here, at reduced scale where it can be: see the
  module doc)."""

  def __init__(self, size: int, area_range, ratio_range):
    self._size = size
    self._area_range = tuple(area_range)
    self._ratio_range = tuple(ratio_range)

  def crop(self, image, rng: np.random.Generator, max_pixels: int | None = None):
    def draw_box(height, width):
      return random_crop_box(height, width, self._area_range, self._ratio_range, rng)
    if isinstance(image, (bytes, np.bytes_)):
      image, box = decode_for_crop(bytes(image), self._size, draw_box, max_pixels)
    else:
      box = draw_box(*image.shape[:2])
    return resize_box(image, box, self._size)

  def random_map(self, record, rng: np.random.Generator):
    return {**record, "image": self.crop(record["image"], rng)}


def flip_left_right(image: np.ndarray) -> np.ndarray:
  """A contiguous mirror image of [H, W, C]: pixels are copied as C-byte units (numpy's
  copy loop over a reversed W x C view runs C elements at a time, 2x slower)."""
  pixel = np.dtype((np.void, image.shape[-1] * image.itemsize))
  rows = np.ascontiguousarray(image).view(pixel)[:, ::-1]
  return np.ascontiguousarray(rows).view(image.dtype).reshape(image.shape)


class RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip with probability 1/2."""

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() < 0.5:
      return {**record, "image": flip_left_right(record["image"])}
    return record


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation view: shorter side to `size` (bicubic), then the central size x size."""
  height, width = image.shape[:2]
  scale = size / min(height, width)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  left, top = (new_w - size) // 2, (new_h - size) // 2
  resized = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
  return np.asarray(resized.crop((left, top, left + size, top + size)))


class CenterCrop(grain.transforms.Map):
  """The evaluation view of every image field: see `resize_center_crop`."""

  def __init__(self, size: int):
    self._size = size

  def map(self, record):
    return {k: resize_center_crop(v, self._size) if k.startswith("image") else v
            for k, v in record.items()}


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 0..255 -> float32 (x / 255 - mean) / std, channels last.

  As x * scale + offset over rows of width * channels values: numpy's inner loop then
  runs over a whole row rather than 3 broadcast channels (10x faster per batch)."""
  images = np.asarray(images)
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.size not in (1, images.shape[-1]) or std.size not in (1, images.shape[-1]):
    raise ValueError(f"mean {mean} / std {std} do not match {images.shape[-1]} channels")
  row = images.shape[-2] * images.shape[-1] if images.ndim >= 2 else images.shape[-1]
  scale = np.resize(1.0 / (255.0 * std), row).astype(np.float32)
  offset = np.resize(-mean / std, row).astype(np.float32)
  out = images.reshape(-1, row).astype(np.float32)
  out *= scale
  out += offset
  return out.reshape(images.shape)


class TokenizeCaptions(grain.transforms.Map):
  """Batch of uint8 images and caption strings -> uint8 images and int32 token ids.

  Done per batch, after batching: the tokenizer encodes a whole batch in one (parallel,
  Rust) call. Images stay uint8 until the train step normalises them on the device
  (`Objective.prepare`): a quarter of the bytes in prefetch buffers, between worker
  processes and onto the device, and no float pass on the host's cores.
  """

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  def map(self, batch):
    return {"image": batch["image"], "text": self._tokenizer.encode(batch["text"].tolist())}


class CopyField(grain.transforms.Map):
  """record[dst] = record[src]: a second view that starts from the same crop."""

  def __init__(self, src: str, dst: str):
    self._src, self._dst = src, dst

  def map(self, record):
    return {**record, self._dst: record[self._src]}


def _shift_hue(image: Image.Image, hue: float) -> Image.Image:
  # torchvision's PIL path: rotate the 8-bit HSV hue channel by int(hue * 255), wrapping.
  h, s, v = image.convert("HSV").split()
  h = Image.fromarray(((np.asarray(h, np.int32) + int(hue * 255)) % 256).astype(np.uint8), "L")
  return Image.merge("HSV", (h, s, v)).convert("RGB")


# torchvision ColorJitter's four operations on PIL images, in its order of indices.
JITTER_OPS = (
    lambda image, f: ImageEnhance.Brightness(image).enhance(f),
    lambda image, f: ImageEnhance.Contrast(image).enhance(f),
    lambda image, f: ImageEnhance.Color(image).enhance(f),
    _shift_hue,
)


def color_jitter(image: np.ndarray, factors, order) -> np.ndarray:
  """uint8 RGB with brightness, contrast, saturation factors and a hue shift (factors[3],
  in [-0.5, 0.5]) applied in `order` (a permutation of 0..3); a None factor is skipped."""
  pil = Image.fromarray(image)
  for i in order:
    if factors[i] is not None:
      pil = JITTER_OPS[i](pil, factors[i])
  return np.asarray(pil)


class RandomColorJitter(grain.transforms.RandomMap):
  """torchvision's RandomApply(ColorJitter(b, c, s, h), p) on field `key`: with probability p,
  factors drawn uniformly from [max(0, 1 - x), 1 + x] (hue from [-h, h]) are applied in a
  random order; a strength of 0 leaves that property alone."""

  def __init__(self, strengths, p: float, key: str = "image"):
    self._strengths = tuple(float(s) for s in strengths)
    self._p, self._key = p, key

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self._p:
      return record
    b, c, s, h = self._strengths
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) if x > 0 else None for x in (b, c, s)]
    factors.append(rng.uniform(-h, h) if h > 0 else None)
    return {**record, self._key: color_jitter(record[self._key], factors, order)}


def grayscale(image: np.ndarray) -> np.ndarray:
  """PIL's ITU-R 601-2 luma, repeated over the 3 channels (torchvision's RandomGrayscale)."""
  gray = np.asarray(Image.fromarray(image).convert("L"))
  return np.repeat(gray[..., None], 3, axis=-1)


class RandomGrayscale(grain.transforms.RandomMap):
  """Field `key` to grayscale with probability p."""

  def __init__(self, p: float, key: str = "image"):
    self._p, self._key = p, key

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self._p:
      return record
    return {**record, self._key: grayscale(record[self._key])}
