"""`combinax-decode`: text from a language model, the one a `combinax-train` run trained (`--output_dir`) or a
bundled pretrained one (`--pretrained`); optionally with quantized weights (`--quantize`), a draft model proposing
tokens for speculative decoding (`--draft`), and prompts read from the terminal with the answer streamed as it is
made (`--interactive`). `load_run` and `load_pretrained` give what decoding needs of either (`LM`)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from absl import flags

from combinax.cli.frame import Command, ConfigError, parse_config, persistent_compilation_cache

HELP = """combinax-decode: text from the language model a combinax-train run trained, or a bundled pretrained one.

  combinax-decode --output_dir=runs/lm --prompt="In the beginning" [--max_length=N --temperature=0.8 --top_k=40]
  combinax-decode --pretrained=smollm2-135m-instruct --quantize=gguf --prompt="What is the capital of France?"
  combinax-decode --pretrained=smollm2-135m-instruct --quantize=int8 --interactive      # one prompt a line

A run's model and tokenizer are built from the configuration its newest checkpoint was trained with (or
--output_dir/config.gin for runs older than that), with that checkpoint's params; it decodes up to the max_len the
model was trained with (--allow_longer goes past it, where the positional encoding allows). A pretrained model's
prompt is put in its chat template (--template='{prompt}' gives the text as it is) and it makes up to 256 tokens.

--image=FILE (a run of an image-prefix LM, e.g. configs/vlm_smollm2_rendered.gin): the image the model reads
  before the prompt, one per --prompt; it must have the size and channels the model was trained on (named if not),
  and its answer is printed.
--quantize: int8 (kernels and embedding tables in int8, groups of 32 as llama.cpp's Q8_0: ~1.8x faster than float32
  on a CPU at ~0.27x the memory, perplexity within 1%), q4 or q4_1 (kernels in 4 bits, tables int8: ~0.18x the
  memory, less accurate), gguf (a GGUF model's own blocks kept packed, as llama.cpp runs them).
  With --pretrained, the first run makes them and keeps them beside the float32 weights in the pretrained cache
  ($COMBINAX_CACHE/pretrained/NAME/quantized-KIND; $COMBINAX_CACHE is ~/.cache/combinax unless set); later runs
  read them as they are (a cache of another kind or combinax version, or damaged, is rebuilt with a warning).
--compilation_cache (on by default): the programs a run compiles are kept in $COMBINAX_CACHE/jax-compilation (JAX's
  persistent compilation cache) and read by later runs instead of compiled again, so that a repeated answer starts
  in seconds; --nocompilation_cache compiles afresh. JAX_COMPILATION_CACHE_DIR, where set, is used instead. Both
  caches may be deleted at any time.
--draft=DIR: a small LM trained with the same tokenizer (a combinax-train run) proposes --draft_k tokens at a
  time and the model checks them in one call: the text is the model's own (greedy: token for token), and faster
  when the draft is often right.
--knowledge_base=DIR: each prompt's --retrieve_k nearest chunks of a knowledge base (python -m combinax.retrieval
  build) are put in front of it through --context_template, and the chunks used are listed on stderr: retrieval-
  augmented generation, the facts read at generation time.
--samples=N --output=FILE.jsonl: a synthetic corpus of N samples (prompt i is --prompt number i modulo their count),
  --batch_size at a time, with FILE.jsonl.provenance.json saying what made it; rerunning goes on where it stopped.
  Train on it with lm_pipeline.path = "FILE.jsonl".
"""

def define(values: flags.FlagValues):
  """combinax-decode's own flags (beside --output_dir and --config: bindings added to the run's configuration)."""
  flags.DEFINE_multi_string("prompt", [], "prompt text(s); several make a batch", flag_values=values)
  flags.DEFINE_integer("max_length", None, "tokens to generate (default: up to the model's max_len, the positions "
                       "it was trained for; 60 for models without one)", flag_values=values)
  flags.DEFINE_float("temperature", 0.8, ">= 0; 0 is greedy", flag_values=values)
  flags.DEFINE_integer("top_k", 40, "sample among the k likeliest tokens (0: all)", flag_values=values)
  flags.DEFINE_float("top_p", None, "sample among the likeliest tokens whose probabilities sum to top_p, in (0, 1] "
                     "(nucleus sampling)", flag_values=values)
  flags.DEFINE_bool("allow_longer", False, "decode past the max_len the model was trained with. Positions beyond it "
                    "were never seen in training: sinusoidal and rotary encodings give them values, but the model "
                    "has not learned to use them, and text degrades; a learned position table has no rows for them "
                    "at all, so it is refused even then", flag_values=values)
  flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=values)
  flags.DEFINE_multi_string("image", [], "an image file the model reads before the prompt (an image-prefix LM's "
                            "run), one per --prompt", flag_values=values)
  flags.DEFINE_string("pretrained", None, "a bundled pretrained LM to decode instead of a run's (python -m "
                      "combinax.pretrained list)", flag_values=values)
  flags.DEFINE_string("quantize", None, "int8, q4 or q4_1 weights (quantized at load), or gguf (a GGUF model's own "
                      "packed blocks, with --pretrained)", flag_values=values)
  flags.DEFINE_string("draft", None, "the output_dir of a small LM trained with the same tokenizer, which proposes "
                      "tokens for the model to check (speculative decoding)", flag_values=values)
  flags.DEFINE_integer("draft_k", 4, "tokens the draft proposes at a time", flag_values=values)
  flags.DEFINE_string("template", None, "how a prompt's text is put to the model, with {prompt} for the text "
                      "(default: a pretrained model's chat template, else the text as it is)", flag_values=values)
  flags.DEFINE_integer("samples", None, "write this many samples to --output as a synthetic corpus (JSON lines), "
                       "cycling through the --prompt texts", flag_values=values)
  flags.DEFINE_string("output", None, "with --samples: the .jsonl file to write (resumed if it exists)",
                      flag_values=values)
  flags.DEFINE_integer("batch_size", 8, "with --samples: samples made together", flag_values=values)
  flags.DEFINE_string("knowledge_base", None, "a knowledge base's folder: each prompt is given its nearest chunks "
                      "(retrieval-augmented generation)", flag_values=values)
  flags.DEFINE_integer("retrieve_k", 3, "with --knowledge_base: chunks put in front of each prompt", flag_values=values)
  flags.DEFINE_string("context_template", None, "with --knowledge_base: how the chunks and the prompt are put "
                      "together, with {context} and {prompt} (default: combinax.retrieval.rag.CONTEXT_TEMPLATE)",
                      flag_values=values)
  flags.DEFINE_bool("compilation_cache", True, "keep the compiled programs in $COMBINAX_CACHE/jax-compilation (JAX's "
                    "persistent compilation cache) and read them in later runs instead of compiling again "
                    "(JAX_COMPILATION_CACHE_DIR, where set, is used instead)", flag_values=values)
  flags.DEFINE_bool("interactive", False, "read one prompt a line from the terminal and print each answer as it is "
                    "made (an empty line ends)", flag_values=values)


QUANTIZE = ("int8", "q4", "q4_1", "gguf")
PRETRAINED_LENGTH = 256     # --max_length of a pretrained LM when not given
INTERACTIVE_POSITIONS = 2048   # the most positions (prompt + answer) an interactive session's caches hold


class LM(NamedTuple):
  """What decoding needs of a language model, wherever it comes from."""
  build: Callable[[int], Any]     # max_len -> the model in predict mode
  eval_model: Any                 # the model as trained (its positions bound --max_length)
  params: Any
  tokenizer: Any
  prefix: tuple                   # token ids put before each prompt's own
  start_id: int | None            # fed before everything (the sampler's start token), None: nothing
  template: str                   # the text of a prompt: the template with {prompt} replaced by the text
  default_length: int | None      # --max_length when not given; None: fill the positions the model was trained for
  roomy: bool                     # its caches may hold more positions than a call needs (no learned position table):
                                  # room for decoding's prompt buckets, so that prompts share compilations
  image: tuple | None = None      # (height, width, channels) of the images an image-prefix LM reads; None: text only


def decode(args):
  """What combinax-decode does with its flags `args` (its module's docstring)."""
  if (args.output_dir is None) == (args.pretrained is None):
    raise ConfigError("combinax-decode: give --output_dir (a combinax-train run) or --pretrained (a bundled model), "
                      "one of them")
  if args.quantize is not None and args.quantize not in QUANTIZE:
    raise ConfigError(f"combinax-decode: --quantize must be one of {', '.join(QUANTIZE)}, got {args.quantize!r}")
  if args.quantize == "gguf" and args.pretrained is None:
    raise ConfigError("combinax-decode: --quantize=gguf keeps a GGUF file's packed blocks, so it needs --pretrained "
                      "(a run's float32 params quantize with --quantize=int8, q4 or q4_1)")
  if args.compilation_cache:
    persistent_compilation_cache()   # before anything compiles (a restore's checksums compile too)
  lm = (load_run(Path(args.output_dir), args.config) if args.pretrained is None else
        load_pretrained(args.pretrained, quantize=args.quantize))
  if args.pretrained is None and args.quantize in ("int8", "q4", "q4_1"):
    from combinax import quant
    try:
      lm = lm._replace(params=quant.for_decoding(lm.eval_model, lm.params, args.quantize))
    except ValueError as e:
      raise ConfigError(f"combinax-decode: --quantize={e}") from None
  template = lm.template if args.template is None else args.template
  if "{prompt}" not in template:
    raise ConfigError(f"combinax-decode: --template must contain {{prompt}}, got {template!r}")
  lm = lm._replace(template=template)
  draft = None if args.draft is None else _draft(Path(args.draft), lm)
  if lm.image is not None or args.image:
    return _decode_images(args, lm, draft)
  retrieve = _retriever(args)
  if args.interactive:
    _interactive(args, lm, draft, retrieve)
  elif args.samples is not None:
    if args.knowledge_base is not None:
      raise ConfigError("combinax-decode: --knowledge_base with --samples is not supported: a synthetic corpus is "
                        "made from the prompts as given")
    _synthesize(args, lm, draft, args.prompt or [""])
  else:
    _decode_prompts(args, lm, draft, [retrieve(p) for p in args.prompt or [""]])


def _retriever(args) -> Callable[[str], str]:
  """prompt -> the text given to the model: with --knowledge_base, the prompt with its nearest chunks in front of
  it (the chunks used listed on stderr); else the prompt itself."""
  if args.knowledge_base is None:
    if args.context_template is not None:
      raise ConfigError("combinax-decode: --context_template only means something with --knowledge_base")
    return lambda prompt: prompt
  from combinax.retrieval import KnowledgeBase, rag
  try:
    template = rag.check_template(args.context_template or rag.CONTEXT_TEMPLATE)
  except rag.RAGError as e:
    raise ConfigError(f"combinax-decode: --context_template: {e}") from None
  if args.retrieve_k < 1:
    raise ConfigError(f"combinax-decode: --retrieve_k must be at least 1, got {args.retrieve_k}")
  knowledge_base = KnowledgeBase.open(args.knowledge_base)

  def retrieve(prompt: str) -> str:
    [text], [hits] = rag.augment(knowledge_base, [prompt], k=args.retrieve_k, template=template)
    for rank, hit in enumerate(hits, 1):
      print(f"[{rank}] {hit.document} #{hit.chunk} ({hit.score:.3f}): {' '.join(hit.text.split())[:80]}",
            file=sys.stderr, flush=True)
    return text
  return retrieve


def load_run(output_dir: Path, bindings=()) -> LM:
  """The LM a combinax-train run trained, from its newest checkpoint and the configuration kept in it (`bindings`
  added to it)."""
  import jax
  import jax.numpy as jnp

  from combinax.store import checkpoints
  latest = checkpoints.latest(output_dir)
  if latest is None:
    raise ConfigError(f"combinax-decode: no checkpoint in {output_dir}; train with combinax-train "
                      f"--output_dir={output_dir}")
  # The configuration the checkpoint was trained with (kept in it), not config.gin, which a later run may rewrite.
  config = checkpoints.read_manifest(latest)["metadata"].get("run", {}).get("config")
  source = f"the configuration kept in {latest}"
  if config is None:   # a checkpoint older than that
    if not (output_dir / "config.gin").exists():
      raise ConfigError(f"combinax-decode: {latest} records no configuration and {output_dir}/config.gin is missing")
    config, source = (output_dir / "config.gin").read_text(), str(output_dir / "config.gin")
  refuse_code(config, source)
  import gin

  def configured():
    """gin holds one configuration at a time, and a draft's run is read after the model's: each run's models are
    built under its own (--config adds to the model's, not the draft's)."""
    gin.clear_config()
    parse_config([], [config, *bindings], skip_unknown=True)
    from combinax.train import sample_setup
    return sample_setup()

  model_fn, tokenizer = configured()
  if tokenizer is None:
    raise ConfigError(f"combinax-decode: the config of {output_dir} binds no tokenizer (sample_setup.tokenizer)")
  eval_model = model_fn(mode="eval")
  # A KV cache holds max_len positions: just enough for this run. Models without one (RNNs) take no max_len.
  parameters = inspect.signature(model_fn).parameters
  takes_max_len = "max_len" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
  image = _image_input(eval_model, output_dir)
  example = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  if image is not None:   # an image-prefix LM: (images, prompt lengths, ids)
    example = (jax.ShapeDtypeStruct((1, *image), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32), example)
  template = jax.eval_shape(lambda: eval_model.init(jax.random.key(0), example)[0])
  try:
    params, _ = checkpoints.restore(latest, template, prefix="params")
  except checkpoints.CheckpointMismatchError as e:
    raise ConfigError(f"combinax-decode: {_projector_mismatch(latest, template) or e}") from None
  eos = getattr(tokenizer, "eos_id", None)
  def build(max_len: int):
    model_fn, _ = configured()
    return model_fn(mode="predict", **({"max_len": max_len} if takes_max_len else {}))

  return LM(build=build,
             eval_model=eval_model, params=params, tokenizer=tokenizer,
             # Training texts follow an EOS in the packed stream, so a prompt starts after one too.
             # (An image-prefix LM's texts start after its image and a start token.)
             prefix=(eos,) if eos is not None and image is None else (), start_id=0, template="{prompt}",
             default_length=None, roomy=False, image=image)


def _projector_mismatch(checkpoint: Path, template) -> str | None:
  """What is wrong when an image projector was trained for an LM of another width than the one configured now (the
  checkpoint's image/projector/kernel against the model's), or None."""
  from combinax.store import checkpoints
  stored = {e["path"]: e["shape"] for e in checkpoints.read_manifest(checkpoint)["leaves"]}
  trained = stored.get("params/image/projector/kernel")
  wanted = template.get("image", {}).get("projector", {}).get("kernel") if isinstance(template, dict) else None
  if trained is None or wanted is None or trained[-1] == wanted.shape[-1]:
    return None
  return (f"{checkpoint}: its image projector was trained for an LM of width {trained[-1]} "
          f"(image/projector/kernel {list(trained)}), but the configured LM's width is {wanted.shape[-1]}: decode "
          "with the LM it was trained with, or train the projector for this one")


def _image_input(model, output_dir: Path) -> tuple | None:
  """(height, width, channels) of the images `model` reads (its `CheckImages`), or None for a text-only LM."""
  from combinax.layers.base import walk
  from combinax.layers.audio import CheckFrames
  from combinax.layers.vision import CheckImages
  if model.n_in != 3:
    return None
  checks = [layer for layer in walk(model) if isinstance(layer, CheckImages)]
  if not checks and any(isinstance(layer, CheckFrames) for layer in walk(model)):
    raise ConfigError(f"combinax-decode: the model of {output_dir} hears spoken frames before its prompt (an "
                      "audio-prefix LM); combinax-decode reads images only: decode it from Python, "
                      "decoding.autoregressive_sample(model, params, prompt, inputs=(frames, prompt lengths))")
  if not checks or checks[0].size is None or None in checks[0].size or checks[0].channels is None:
    raise ConfigError(f"combinax-decode: the model of {output_dir} takes 3 inputs but names no image size and "
                      "channels (ViT.image_size, ViT.channels; TextRecognizer.width), so its images cannot be "
                      "checked")
  return (*checks[0].size, checks[0].channels)


def refuse_code(config: str, source: str):
  """A ConfigError naming the first `import` or `include` in a configuration read from a run directory (`source`
  says where): decoding a run must not run code or read files that its directory names (anyone who could write
  there could make it run anything), and a run's model needs no module but combinax's."""
  from combinax.configurable import code_in_config
  found = code_in_config(config)
  if found:
    line, statement = found[0]
    raise ConfigError(f"combinax-decode: {source}, line {line}: `{statement}` refused: a run directory's "
                      "configuration is data, not code, so it is read with no import or include (the modules a "
                      "run needs are combinax's, already registered)")


def load_pretrained(name: str, *, quantize: str | None = None) -> LM:
  """A bundled LM (`python -m combinax.pretrained list`), in its chat template; `quantize` (one of `QUANTIZE`):
  its weights in that form, made once and then read from the pretrained cache (`pretrained.load_quantized`)."""
  from combinax import pretrained
  from combinax.pretrained import registry
  if name not in registry.ENTRIES:
    raise ConfigError(f"combinax-decode: no pretrained model {name!r}; known: {', '.join(registry.list_models())}")
  if quantize is None:
    _, params, tokenizer = pretrained.load(name)
  else:
    try:
      _, params, tokenizer = pretrained.load_quantized(name, quantize)
    except pretrained.PretrainedError:   # (a ValueError too, but its message says all: not a flag's error)
      raise
    except ValueError as e:   # quant.for_decoding refusing the model's layers
      raise ConfigError(f"combinax-decode: --quantize={e}") from None
  module, config = registry.family(name), pretrained.config(name)
  start_id = module.start_id(config) if hasattr(module, "start_id") else 0
  return LM(build=lambda max_len: pretrained.model(name, mode="predict", max_len=max_len),
             eval_model=pretrained.model(name), params=params, tokenizer=tokenizer, prefix=(), start_id=start_id,
             template=registry.info(name).prompt_template, default_length=PRETRAINED_LENGTH, roomy=True)


def _draft(output_dir: Path, lm: LM) -> LM:
  from combinax.speculative import check_draft
  draft = load_run(output_dir)
  try:
    check_draft(lm.eval_model, draft.eval_model, target_name="the model", draft_name=f"--draft={output_dir}")
  except ValueError as e:
    raise ConfigError(f"combinax-decode: {e}") from None
  return draft


def _encode(lm: LM, text: str) -> list[int]:
  return list(lm.prefix) + [int(i) for i in lm.tokenizer.encode(lm.template.replace("{prompt}", text))]


def text_of(lm: LM, ids) -> str:
  """Generated ids as text, up to the EOS (and without the padding after it)."""
  import numpy as np
  eos = getattr(lm.tokenizer, "eos_id", None)
  ids = [int(i) for i in ids]
  if eos in ids:
    ids = ids[:ids.index(eos)]
  return lm.tokenizer.decode(np.asarray([i for i in ids if i != 0], np.int32))


def _trained_positions(model) -> int | None:
  from combinax.layers.base import walk
  return min((layer.max_len for layer in walk(model) if isinstance(getattr(layer, "max_len", None), int)),
             default=None)


def max_length_for(args, model, prompt_width: int, requested: int | None) -> int:
  """--max_length, checked against the positions the model was trained for (its layers' `max_len`): by default as
  many tokens as fit after the prompt; beyond them only with --allow_longer, and never with a learned table."""
  from combinax.decoding import check_sampling
  from combinax.layers.base import walk
  from combinax.layers.positional import LearnedPositionalEncoding
  trained = _trained_positions(model)
  if requested is None:
    requested = 60 if trained is None else trained - prompt_width
    if requested < 1:
      raise ConfigError(f"combinax-decode: the prompt takes {prompt_width} of the {trained} positions the model was "
                        "trained for, which leaves none to generate; shorten it")
  try:
    check_sampling(requested, args.temperature, args.top_k or None, args.top_p)
  except ValueError as e:
    raise ConfigError(f"combinax-decode: {e}") from None
  if trained is None or prompt_width + requested <= trained:
    return requested
  why = (f"combinax-decode: the prompt ({prompt_width} tokens) + --max_length={requested} needs "
         f"{prompt_width + requested} positions, but the model was trained with max_len={trained}")
  if any(isinstance(layer, LearnedPositionalEncoding) for layer in walk(model)):
    raise ConfigError(f"{why}, and its learned position table has no rows past {trained}: give --max_length <= "
                      f"{trained - prompt_width}")
  if not args.allow_longer:
    raise ConfigError(f"{why}. Positions past {trained} were never seen in training (its positional encoding gives "
                      "them values, but the model has not learned to use them, and text degrades): give "
                      f"--max_length <= {trained - prompt_width}, or --allow_longer to decode past it anyway")
  return requested


def _sampling(args, lm: LM):
  import jax
  eos = getattr(lm.tokenizer, "eos_id", None)
  return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, eos_id=eos,
              rng=jax.random.key(args.seed), start_id=lm.start_id)


def _sample_ids(args, lm: LM, draft: LM | None, encoded: list[list[int]], rng):
  """Generated ids (batch, max_length) after the encoded prompts (the flags' settings)."""
  import numpy as np

  from combinax import decoding
  width = max(len(e) for e in encoded)
  prompt = np.zeros((len(encoded), width), np.int32)
  for i, ids in enumerate(encoded):
    prompt[i, :len(ids)] = ids
  requested = args.max_length if args.max_length is not None else lm.default_length
  max_length = max_length_for(args, lm.eval_model, width, requested)
  k = args.draft_k if draft is not None else 0
  # A KV cache holds max_len positions: what this call needs (with a draft: k more, and the start token), or for a
  # model without a learned position table room for the prompt's bucket too.
  fed = max(width, 16, 1 << max(width - 1, 0).bit_length()) if lm.roomy else width
  max_len = fed + max_length + (k + 1 if draft is not None or lm.roomy else 0)
  settings = {**_sampling(args, lm), "rng": rng}
  try:
    if draft is None:
      return np.asarray(decoding.autoregressive_sample(lm.build(max_len), lm.params, prompt, max_length=max_length,
                                                       prompt_lengths=[len(e) for e in encoded], **settings))
    if len({len(e) for e in encoded}) > 1:
      raise ConfigError("combinax-decode: --draft decodes prompts of one length in a batch; give one --prompt")
    out, stats = decoding.speculative_sample(lm.build(max_len), lm.params, draft.build(max_len), draft.params,
                                             prompt, max_length=max_length, k=k, **settings)
    print(f"combinax-decode: the draft's tokens accepted: {stats.acceptance_rate:.0%} ({stats.accepted} in "
          f"{stats.rounds} rounds of {k}); {max_length / max(stats.rounds, 1):.2f} tokens per call of the model",
          file=sys.stderr)
    return np.asarray(out)
  except ValueError as e:   # a sampling setting out of range (each flag is named)
    raise ConfigError(f"combinax-decode: {e}") from None


def _decode_prompts(args, lm: LM, draft: LM | None, prompts: list[str]):
  import jax
  encoded = [_encode(lm, p) for p in prompts]
  out = _sample_ids(args, lm, draft, encoded, jax.random.key(args.seed))
  for given, ids in zip(encoded, out):
    if lm.template == "{prompt}":   # the prompt's text and its continuation, decoded together
      eos = getattr(lm.tokenizer, "eos_id", None)
      print(text_of(lm, [i for i in given if i != eos] + _until_eos(lm, ids)))
    else:   # a chat turn: the answer
      print(text_of(lm, ids))


def read_image(path: str, expected: tuple):
  """The image file `path` as float32 (height, width, channels) in [0, 1] (as the pipelines give them), or a
  ConfigError of one line: a missing or unreadable file, or a size or channels other than `expected`'s."""
  import numpy as np

  try:
    from PIL import Image
  except ImportError:
    raise ConfigError("combinax-decode: --image needs Pillow: pip install combinax[vision]") from None
  height, width, channels = expected
  if not Path(path).is_file():
    raise ConfigError(f"combinax-decode: --image={path}: no such file")
  try:
    with Image.open(path) as opened:
      image = opened.convert("RGB") if opened.mode == "P" else opened.copy()   # a palette is storage, not channels
  except OSError as e:
    raise ConfigError(f"combinax-decode: --image={path}: not an image this machine can read ({e})") from None
  bands = len(image.getbands())
  if image.size != (width, height) or bands != channels:
    raise ConfigError(f"combinax-decode: --image={path} is {image.size[0]} x {image.size[1]} pixels with {bands} "
                      f"channel(s) ({image.mode}); the model reads {width} x {height} with {channels}: resize or "
                      "convert it first")
  array = np.asarray(image, np.float32).reshape(height, width, channels)
  return array / np.float32(255)


def _decode_images(args, lm: LM, draft: LM | None):
  """Each --image with its --prompt through an image-prefix LM; prints each answer."""
  import numpy as np

  from combinax import decoding
  if lm.image is None:
    raise ConfigError("combinax-decode: --image: this model reads no images (a text LM); an image-prefix LM's run "
                      "does, e.g. configs/vlm_smollm2_rendered.gin")
  if not args.image:
    raise ConfigError("combinax-decode: this model reads an image before its prompt: give --image=FILE")
  for flag, given in (("--draft", draft is not None), ("--knowledge_base", args.knowledge_base is not None),
                      ("--samples", args.samples is not None), ("--interactive", args.interactive)):
    if given:
      raise ConfigError(f"combinax-decode: {flag} with --image is not supported")
  prompts = args.prompt or [""]
  if len(prompts) != len(args.image):
    raise ConfigError(f"combinax-decode: one --prompt per --image: got {len(args.image)} image(s) and "
                      f"{len(prompts)} prompt(s)")
  images = [read_image(path, lm.image) for path in args.image]
  for image, text in zip(images, prompts):   # one at a time: each prompt is its own prefix, of its own length
    ids = _encode(lm, text)
    inputs = (image[None], np.asarray([len(ids)], np.int32))
    # The image's tokens take positions before the text, in the caches and among those the model was trained for.
    fed = decoding.prefilled_positions(lm.build(1), inputs) + len(ids)
    max_length = max_length_for(args, lm.eval_model, fed, args.max_length)
    out = decoding.autoregressive_sample(lm.build(fed + max_length), lm.params, np.asarray([ids], np.int32),
                                         max_length=max_length, inputs=inputs, **_sampling(args, lm))
    print(text_of(lm, np.asarray(out)[0]).strip())


def _synthesize(args, lm: LM, draft: LM | None, prompts: list[str]):
  """--samples samples written to --output as JSON lines (combinax.distill.synthetic)."""
  import jax

  from combinax.distill.synthetic import SyntheticError, write_samples
  if args.output is None:
    raise ConfigError("combinax-decode: --samples writes a corpus: give it a file with --output=FILE.jsonl")

  def generate(batch: list[str], index: int) -> list[str]:
    out = _sample_ids(args, lm, draft, [_encode(lm, p) for p in batch], jax.random.fold_in(jax.random.key(args.seed),
                                                                                     index))
    return [text_of(lm, ids) for ids in out]

  provenance = {"model": args.pretrained or str(Path(args.output_dir).resolve()), "quantize": args.quantize,
                "template": lm.template, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "max_length": args.max_length, "seed": args.seed, "draft": args.draft}
  try:
    made = write_samples(args.output, generate, prompts, samples=args.samples, batch_size=args.batch_size,
                         provenance=provenance)
  except SyntheticError as e:
    raise ConfigError(f"combinax-decode: {e}") from None
  print(f"combinax-decode: {made} samples written to {args.output} ({args.samples} in all)", file=sys.stderr)


def _until_eos(lm: LM, ids) -> list[int]:
  eos = getattr(lm.tokenizer, "eos_id", None)
  ids = [int(i) for i in ids]
  return ids[:ids.index(eos)] if eos in ids else ids


def _interactive(args, lm: LM, draft: LM | None, retrieve: Callable[[str], str]):
  """One prompt a line from stdin, each answer printed as it is made; an empty line or the end of input ends it."""
  import numpy as np

  from combinax import decoding
  positions = min(_trained_positions(lm.eval_model) or INTERACTIVE_POSITIONS, INTERACTIVE_POSITIONS)
  decoder = lm.build(positions)
  draft_decoder = None if draft is None else draft.build(positions)
  requested = args.max_length if args.max_length is not None else lm.default_length
  settings = _sampling(args, lm)
  printer = _Printer(lm)   # one for the session: the sampler compiles once for it
  while True:
    if sys.stdin.isatty():
      print("> ", end="", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
      return
    ids = _encode(lm, retrieve(line.rstrip("\n")))
    room = positions - len(ids) - 1 - (args.draft_k if draft is not None else 0)
    max_length = min(requested or room, room)
    if max_length < 1:
      print(f"combinax-decode: this prompt takes {len(ids)} of the {positions} positions; shorten it",
            file=sys.stderr, flush=True)
      continue
    prompt = np.asarray([ids], np.int32)
    printer.start()
    try:
      if draft is None:
        # Waited for: the call returns before the loop has run (JAX dispatches it), and its tokens are this answer.
        np.asarray(decoding.autoregressive_sample(decoder, lm.params, prompt, max_length=max_length,
                                                  on_token=printer, **settings))
      else:   # the rounds' tokens come at the end
        out, _ = decoding.speculative_sample(decoder, lm.params, draft_decoder, draft.params, prompt,
                                             max_length=max_length, k=args.draft_k, **settings)
        for token in np.asarray(out)[0]:
          printer(np.asarray([token]))
    except ValueError as e:
      print(f"combinax-decode: {e}", file=sys.stderr, flush=True)
    print(flush=True)


class _Printer:
  """Prints a stream of tokens as text, a piece at a time: the text of the answer so far less what is already
  printed (a token may end inside a multi-byte character: then it waits for the next), until the EOS."""

  def __init__(self, lm: LM):
    self.lm = lm
    self.answer = {"ids": [], "shown": "", "ended": False}

  def start(self):
    self.answer.update(ids=[], shown="", ended=False)

  def __call__(self, tokens):
    answer = self.answer
    if answer["ended"]:
      return
    token = int(tokens[0])
    if token == getattr(self.lm.tokenizer, "eos_id", None):
      answer["ended"] = True
      return
    answer["ids"].append(token)
    text = text_of(self.lm, answer["ids"])
    if text.endswith("\ufffd"):
      return
    sys.stdout.write(text[len(answer["shown"]):])
    sys.stdout.flush()
    answer["shown"] = text


COMMAND = Command("combinax-decode", HELP, decode, shared=("config", "output_dir"), define=define)


def main(argv: list[str] | None = None):
  """Entry point of `combinax-decode`."""
  COMMAND.main(argv)


if __name__ == "__main__":
  main()
