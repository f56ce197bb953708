"""Models with adapters: a model factory's model with LoRA on chosen kernels, for a second stage of fine-tuning
(nanoVLM's: the projector trained first with the LM frozen, then LoRA on the LM with the projector)."""

from __future__ import annotations

from typing import Callable, Sequence

from combinax import layers as cl


def LoRAModel(model: Callable[..., cl.Layer], *, targets: str | Sequence[str] = "*/kernel", rank: int = 8,
              alpha: float = 16.0, mode: str = "train") -> cl.Layer:
  """`model(mode=mode)` with rank-`rank` LoRA adapters beside the kernels whose paths match `targets` (`cl.LoRA`):
  the params are the model's own, at the same paths, plus `<kernel>_lora_a` / `_lora_b`, so `Trainer.model =
  @LoRAModel` with `Trainer.init_checkpoint` = a run of the plain model starts from that run (the adapters from
  their initialisation, which leaves the model's function unchanged) and `TrainTask.trainable = ["*_lora_*"]`
  trains the adapters alone. Built in every mode the factory takes, so the same binding decodes.

  >>> from combinax.models import TransformerLM
  >>> lm = LoRAModel(lambda mode: TransformerLM(20, 8, 16, n_layers=1, n_heads=2, mode=mode),
  ...                targets="blocks/attention/q/kernel", rank=2)
  >>> [p for p in cx.paths(lm.init(jax.random.key(0), ShapeDtype((1, 4), jnp.int32))[0]) if "lora" in p]
  ['blocks/attention/q/kernel_lora_a', 'blocks/attention/q/kernel_lora_b']
  """
  return cl.LoRA(model(mode=mode), targets, rank=rank, alpha=alpha)
