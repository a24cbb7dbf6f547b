"""Every knob the trainer reads, with its default. Method configs start from here.

Configs are code (`configs/<method>_<size>.py`, `get_config(arg)`); this file is the
one place that lists the keys, so `--config.some.key=value` overrides can be checked
and a typo fails loudly instead of being ignored.
"""
import ml_collections

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = "flip"  # a name in flip_jax.objectives.REGISTRY
  c.seed = 0
  c.dtype = "auto"  # compute dtype: 'auto' = bfloat16 on TPU/GPU, float32 on CPU
  c.image_size = 224
  c.batch_size = 256  # global, summed over all hosts and devices
  c.total_samples = 1_000_000  # training length in samples seen (not epochs)
  c.mask_ratio = 0.5

  # ---- model ------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.type = "two_towers"  # 'two_towers' (CLIP/FLIP) | 'image_tower' (ViT + projection only)
  #                              | 'masked_image' (encoder + pixel decoder) | 'classifier'
  c.model.encoder = "vit"  # encoder of 'masked_image'/'classifier': 'vit' (model.image) | 'swinv2'
  c.model.image = ml_collections.ConfigDict(dict(
      variant="B/16",       # 'Ti|S|B|L|H|g/<patch>' or 'custom' (then width/depth/... below)
      width=0, depth=0, heads=0, mlp_dim=0,  # 0 = take from the variant
      pos_emb="sincos2d",   # 'sincos2d' (fixed) | 'learned'
      cls_token=True,
      ln_pre=False,
      pool="gap",           # 'gap' (mean of all tokens incl. CLS) | 'cls' | 'map'
      ln_post=True,
      act="gelu",           # 'gelu' (erf) | 'gelu_tanh' | 'quick_gelu' | 'relu'
      drop_path=0.0,
      remat="none",         # 'none' | 'full' | 'dots' (save matmul outputs) | 'dots_no_batch'
      #                       (save the non-batched matmuls: not attention's); models/layers.py
      scan=False,           # blocks stored stacked, run as one jax.lax.scan (compile once);
      #                       checkpoints load either way (models/layers.py Stacked)
      mask_token=False,     # learned token for boolean-mask replacement (EVA/SimMIM)
      ln_eps=1e-6,          # every LayerNorm of the tower (OpenAI/HF CLIP: 1e-5)
      patch_bias=True,      # bias of the patch embedding (OpenAI/HF CLIP: none)
      # attention of the tower (and its 'map'/class-attention pooling): 'auto' (cuDNN flash
      # attention on an NVIDIA GPU where it applies, else XLA) | 'xla' | 'cudnn'
      attn_impl="auto",
      init="default",       # initialisation scheme: 'default' | 'flip' | 'beit' (models/inits.py)
      init_std=0.02,        # 'beit': std of its truncated-normal init
  ))
  c.model.text = ml_collections.ConfigDict(dict(
      width=512, depth=12, heads=8, mlp_dim=2048,
      vocab_size=30522,     # overwritten by the tokenizer's size at start-up
      pad_id=0,             # likewise; padding keys are masked in a non-causal tower
      causal=False,
      pool="first",         # 'first' | 'last' (the EOS token, see eos_id) | 'mean'
      eos_id=-1,            # pool='last' pools at the first eos_id; -1: at the largest id (OpenAI)
      act="gelu",
      ln_eps=1e-6,          # every LayerNorm of the tower (OpenAI/HF CLIP: 1e-5)
      remat="none",
      scan=False,           # as model.image.scan
      attn_impl="auto",     # as model.image.attn_impl (padding goes to cuDNN as lengths)
      init="default",       # initialisation scheme: 'default' | 'flip' (models/inits.py)
      # A non-causal tower masks the keys at pad_id (official FLIP does not: False).
      padding_mask=True,
      # The tokenizer's template ([CLS] ... [SEP] for BERT WordPiece); False: word pieces
      # only, padded with pad_id (official FLIP's tf_text BertTokenizer).
      special_tokens=True,
  ))
  c.model.swin = ml_collections.ConfigDict(dict(  # SwinV2 (models/swin.py)
      variant="B",          # 'T|S|B|L|H|g|G' or 'custom' (then embed_dim/depths/heads below)
      embed_dim=0, depths=(), heads=(),  # 0 / () = take from the variant
      patch=4,
      window=12,            # image_size / patch / 2^stage must be divisible by it (or <= it)
      pretrained_windows=(),  # per stage, the window of pre-training (fine-tuning at another)
      mlp_ratio=4.0,
      drop_path=0.0,
      remat="none",
      scan=False,           # scan each stage's blocks (in pairs: plain, shifted window)
      mask_token=False,     # learned token for boolean-mask replacement (SimMIM)
  ))
  c.model.num_classes = 0  # 'classifier': size of the linear head
  c.model.embed_dim = 512  # joint embedding width; 0 = no projection (image_tower only)
  c.model.logit_scale_init = 2.6592600369262695  # log(1/0.07)

  # ---- data -------------------------------------------------------------
  c.tokenizer = "bert-base-uncased"  # local dir/file, hub name, or 'wordpiece:digits'
  c.text_len = 32
  c.data = ml_collections.ConfigDict(dict(
      source="digits",      # 'digits' | 'tfds' | 'wds'
      format="image_text",  # what a batch holds: a name in flip_jax.data.pipeline.FORMATS
      name="",              # TFDS dataset name
      data_dir="",          # TFDS data_dir, or the tar-shard glob for 'wds'
      split="train",
      image_key="image",
      text_key="caption",   # '' = records have no text (image-only / labelled datasets)
      label_key="",         # TFDS feature with the class label ('image_label' batches)
      fraction=1.0,         # train on a fixed, nested random subset of this size (0, 1]
      fraction_seed=0,      # the subset's permutation: same on every host and restart
      rrc_area=(0.5, 1.0),
      rrc_ratio=(3 / 4, 4 / 3),
      flip=True,
      # format 'two_views' (ExtreMA): per view, colour jitter applied with probability
      # color_jitter_p, then grayscale with probability grayscale_p
      color_jitter=(0.4, 0.4, 0.2, 0.1),  # brightness, contrast, saturation, hue
      color_jitter_p=0.8,
      grayscale_p=0.2,
      mean=CLIP_MEAN,
      std=CLIP_STD,
      num_workers=0,        # grain worker processes per host
      shuffle_buffer=1000,  # for streamed (wds) sources
      # Images with more pixels are skipped (counted as data/skipped/too_large) before
      # decoding: a decompression bomb costs nothing. Pillow's own limit (2x its
      # MAX_IMAGE_PIXELS, ~179M) applies on top.
      max_image_pixels=89_478_485,
  ))

  # ---- optimisation ---------------------------------------------------
  c.optim = ml_collections.ConfigDict(dict(
      lr_per_256=4e-6,      # peak lr = lr_per_256 * batch_size / 256
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.2,
      schedule="cosine",    # 'cosine' | 'step' (x0.1 at step_at) | 'constant'
      warmup_samples=0,
      end_lr_ratio=0.0,     # cosine floor as a fraction of the peak
      step_at=(0.875,),     # step schedule: fractions of training where lr *= 0.1
      grad_clip=0.0,        # global-norm clip; 0 = off
      no_decay=(r"(^|/)bias$", r"(^|/)scale$", r"pos_emb", r"cls_token", r"mask_token",
                r"logit_scale"),
      lr_mults=(),          # ((regex, multiplier), ...): first match wins
      freeze=(),            # regexes of params that get no update
  ))

  # ---- method sections: each read only by its objective ------------------
  # Declared for every config so that `--config.extrema.num_masks=8` works anywhere; a
  # method's recipe (flip_jax/recipes/) sets its own section's values.
  # EVA (objectives/eva.py): the frozen CLIP vision tower whose patch features the
  # student regresses.
  c.teacher = ml_collections.ConfigDict(dict(
      # A flip_jax workdir / exported dir, a Hugging Face or open_clip CLIP directory, or
      # 'random:clip_l14' (that architecture, random weights: benchmarks only).
      path="",
      # Which block's output is the target, after the teacher's ln_post and projection:
      # -1 = the last (EVA), -2 the one before, ..., or 1..depth counted from the input.
      layer=-1,
      # Teacher and student patch grids differ: True runs the teacher on the image resized
      # to (student grid x teacher patch) pixels, its learned position embedding resampled
      # bilinearly (a sin-cos one is recomputed for the grid); False refuses the config.
      resample=False,
  ))
  # EVA: BEiT-style block masking (flip_jax.masking.block_mask).
  c.mask = ml_collections.ConfigDict(dict(
      num_masked=105,         # target masked patches per image (may fall short, see masking)
      min_block=16,           # smallest block area drawn, in patches
      max_block=0,            # largest block area drawn; 0 = num_masked
      min_aspect=0.3,         # block aspect ratio h/w is log-uniform in [min, max]
      max_aspect=0.0,         # 0 = 1 / min_aspect
      tries=10,               # failed tries at one block before the mask is final
  ))
  # ExtreMA (objectives/extrema.py); the student's mask ratio is the common mask_ratio.
  c.extrema = ml_collections.ConfigDict(dict(
      num_masks=5,          # K disjoint masks per image; the student encodes B*K sequences
      ema_momentum=0.996,   # m0 of the cosine schedule m(t) = 1 - (1 - m0)(1 + cos(pi t/T))/2
      pool_depth=2,         # class-attention blocks after the ViT
      layer_scale=0.1,      # their layer-scale init
      proj_hidden=4096, proj_dim=256, proj_layers=3,   # projector (student and EMA teacher)
      pred_hidden=4096, pred_layers=2,                 # predictor (student only)
      # 'byol': 2 - 2 cos (the paper's); 'infonce': the official --loss infonce, the batch's
      # other targets as negatives, at `temperature` (official --contrast-temp, default 1).
      loss="byol", temperature=1.0,
  ))
  # SimMIM (objectives/simmim.py).
  c.simmim = ml_collections.ConfigDict(dict(
      mask_patch=32,          # side of a masked square in pixels
      norm_target_patch=0,    # > 0: target = pixels normalised over k x k neighbourhoods
  ))
  # Fine-tuning (objectives/classify.py).
  c.classify = ml_collections.ConfigDict(dict(
      label_smoothing=0.1,
      layer_decay=0.75,       # lr x decay^(depth from the top); 1 = off
  ))

  # ---- run --------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.distributed = ml_collections.ConfigDict(dict(
      auto=False,               # let JAX detect the cluster (TPU pod, SLURM)
      coordinator_address="",   # 'host:port' of process 0; '' = env JAX_COORDINATOR_ADDRESS
      num_processes=0,          # 0 = env JAX_NUM_PROCESSES (unset: single process)
      process_id=-1,            # -1 = env JAX_PROCESS_ID
      # Seconds. A process that sends JAX's coordination service no heartbeat for this long
      # is dead and every other process is terminated; flip_jax's peer watch already stops
      # the others, naming the lost process, after a quarter of it. Long enough to ride out a
      # host's stall (swapping, a long GC, a slow filesystem), short enough not to idle a pod.
      heartbeat_timeout_s=100,
      initialization_timeout_s=300,  # how long processes wait for each other at start-up
      shutdown_timeout_s=300,   # how long a finished process waits at exit for the others
  ))
  c.fsdp_min_size = 2**18  # params with fewer elements stay replicated under FSDP
  c.loss_impl = "global"   # 'global' (jit over the global batch) | 'local' (shard_map)
  c.log_every_steps = 50
  c.ckpt_every_steps = 1000
  c.ckpt_keep = 3
  c.ckpt_async = True
  # A step with a non-finite loss or gradient leaves the state unchanged (counted as
  # nonfinite_steps); this many in a row stop the run with an error.
  c.max_nonfinite_steps = 10
  c.init_from = ""         # a workdir or checkpoint dir: params only, optimizer state dropped
  c.init_prefix = ""       # 'DST[=SRC]': load only the model's DST subtree, from SRC (default DST)
  c.profile_steps = 0      # >0: capture a profiler trace of this many steps
  # JAX's persistent compilation cache (a restart skips compiling): '' = <workdir>/compile_cache,
  # 'none' = off, else a directory or gs:// path. The first step's time is logged as compile_s.
  c.compile_cache_dir = ""
  # CPU only: glibc keeps and reuses the memory XLA frees (flip_jax/host_malloc.py), so a
  # step's scratch is not paged in anew every step. Pays where that scratch is large
  # (flip_b16, batch 8: a 2.1 GB buffer); with one malloc arena, tiny steps and compiles get
  # ~10% slower, so the *_debug configs turn it off. Read by main, benchmark, side_by_side.
  c.host_malloc_reuse = True
  c.evals = ml_collections.ConfigDict()  # name -> {type, every_steps, ...}
  return c
