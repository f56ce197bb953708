"""Training FLOPs of a Transformer LM step, counted so that every block of a stack counts.

XLA's `cost_analysis()` counts the body of a loop once, so a stack of blocks run as one `lax.scan` (`TransformerLM`'s
default, `scan_layers=True`) is counted as one block: the growth recipe's 8-layer d 256 step reads 18.95 GFLOP
scanned and 61.26 GFLOP with the same stack unrolled (jax 0.10.2, CPU). Here a step is always lowered with the stack
unrolled (`scan_layers=False`: the same params and computation, one copy of the block per layer), and `hand_count`
is the matmul count it is checked against (tests/growth/test_flop_count.py). The recipe's step counts 15% more than
its matmuls (53.15 GFLOP by hand): dropout's random bits (XLA counts their integer ops; 54.05 without dropout and
remat) and the attention products that remat="dots" recomputes in the backward pass (58.91 without remat), measured.

    python benchmarks/flops.py      # the growth recipe's steps: small, large, the operator's; XLA and by hand
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The growth recipe's models (configs/grow_lm_kjv.gin), without their scan.
SMALL = dict(vocab_size=8192, d_model=128, d_ff=512, n_layers=4, n_heads=4, positions="rotary", max_len=64,
             tie_embeddings=True)
LARGE = dict(SMALL, d_model=256, d_ff=1024, n_layers=8, n_heads=8)


def xla_flops(fn, *args) -> float:
  """XLA's FLOP count of `fn` compiled for `args` (arrays or ShapeDtypeStructs)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def lm(**options):
  """A TransformerLM whose blocks are unrolled, so that XLA counts each of them."""
  from combinax.models import TransformerLM
  return TransformerLM(**{**options, "scan_layers": False})


def _loss(model, params, x):
  from combinax import layers as cl
  logits, _ = model.apply(params, {}, x, rng=jax.random.key(1), train=True)
  return cl.WeightedCategoryCrossEntropy().apply({}, {}, (logits, x, jnp.ones(x.shape, jnp.float32)))[0]


def refuse_scans(model):
  """A ValueError if `model` runs a stack of more than one block as a scan: XLA would count one of them."""
  from combinax import layers as cl
  scanned = [layer.name for layer in cl.walk(model) if getattr(layer, "scan", False) and layer.n_layers > 1]
  if scanned:
    raise ValueError(f"flops: {model.name} scans {scanned}, which XLA counts as one block each; build it with "
                     "scan_layers=False (flops.lm)")


def step_flops(model, batch: int = 16, length: int = 64) -> float:
  """XLA's count of one training step's forward and backward pass (the gradient of the loss on one batch of token
  ids) of `model`, whose stacks must be unrolled. The optimizer's update is left out: a few FLOPs per parameter,
  under 1% of these steps."""
  refuse_scans(model)
  x = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x)[0])
  return xla_flops(jax.grad(lambda p, x: _loss(model, p, x)), params, x)


def operator_step_flops(small, large, batch: int = 16, length: int = 64) -> float:
  """XLA's count of one step of LiGO's operator phase: the operator expands the small params into the large ones
  inside the step, the large model runs forward and backward, and the gradient flows back to the operator only
  (the small params are frozen)."""
  from combinax import growth
  refuse_scans(large)
  grown = growth.Grown(small, large)
  x = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(lambda: grown.init(jax.random.key(0), x)[0])
  small_params = grown.small_params(params)

  def value(operator, small_params, x):
    return _loss(grown, {**small_params, "growth": operator}, x)
  return xla_flops(jax.grad(value), params["growth"], small_params, x)


def hand_count(*, vocab_size: int, d_model: int, d_ff: int, n_layers: int, n_heads: int, batch: int = 16,
               length: int = 64, n_kv_heads: int | None = None, gated_ff: bool = False, backward: bool = True,
               **_) -> dict:
  """Matmul FLOPs of a decoder LM step by hand (2 per multiply-add), per part: `layer` (one block), `head` (the
  logits) and `total`. Per token, a block's projections take 2 (2 d^2 + 2 d d_kv) (Q and the output d x d, K and V
  d x d_kv), its feed-forward 2 (2 or 3) d d_ff, and attention 2 * 2 T d (scores and their weighted sum, over all T
  positions: the causal mask is applied to a full T x T product); the logits 2 d V. The embedding lookup is a gather
  (no FLOPs). The backward pass costs twice the forward (a gradient for the inputs and one for the weights of each
  product), so a training step is 3x the forward; layer norms, softmax and the loss are left out."""
  d_kv = d_model * (n_kv_heads or n_heads) // n_heads
  tokens = batch * length
  layer = 2 * (2 * d_model * d_model + 2 * d_model * d_kv) + 2 * (3 if gated_ff else 2) * d_model * d_ff \
      + 2 * 2 * length * d_model
  head = 2 * d_model * vocab_size
  factor = 3 if backward else 1
  return {"layer": factor * tokens * layer, "head": factor * tokens * head,
          "total": factor * tokens * (n_layers * layer + head)}


def main():
  from combinax.models import TransformerLM
  small, large = lm(**SMALL), lm(**LARGE)
  x = jax.ShapeDtypeStruct((16, 64), jnp.int32)
  scan = TransformerLM(**LARGE)
  params = jax.eval_shape(lambda: scan.init(jax.random.key(0), x)[0])
  scanned = xla_flops(jax.grad(lambda p, x: _loss(scan, p, x)), params, x)
  rows = {"small LM step": (step_flops(small), hand_count(**SMALL)["total"]),
          "large LM step": (step_flops(large), hand_count(**LARGE)["total"]),
          "operator step": (operator_step_flops(small, large), None)}
  for name, (xla, hand) in rows.items():
    print(f"{name}: {xla / 1e9:.2f} GFLOP (XLA, unrolled)" + (f", {hand / 1e9:.2f} by hand" if hand else ""))
  print(f"large LM step as XLA counts it scanned (one block): {scanned / 1e9:.2f} GFLOP")
  print(f"operator step / large step: {rows['operator step'][0] / rows['large LM step'][0]:.3f}")


if __name__ == "__main__":
  main()
