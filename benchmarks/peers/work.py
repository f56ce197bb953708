"""The training work every framework in `compare.py` does: one definition, read by every worker.

Two models, trained with AdamW on random token batches (the same batches in every framework, from numpy seed 0):
- `transformer`: a decoder-only LM, pre-LayerNorm, fixed sinusoidal positions, ReLU feed-forward, dropout at the
  places Trax and `torch.nn.TransformerEncoderLayer` put it (after the embedding, on the attention weights, on each
  residual branch, after the feed-forward activation), untied output projection, mean cross-entropy.
- `lstm`: embedding -> 2 x LSTM -> output projection, mean cross-entropy, no dropout.
"""

import numpy as np

WORKS = {
    "transformer": dict(vocab=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, seq=128, batch=16,
                        dropout=0.1, lr=1e-3, weight_decay=0.01),
    "lstm": dict(vocab=8192, d_embed=256, d_hidden=512, n_layers=2, seq=64, batch=32, lr=1e-3,
                 weight_decay=0.01),
}
N_BATCHES = 4  # distinct batches, used in turn


def batches(work: str) -> list:
  """`N_BATCHES` int32 token arrays (batch, seq + 1): inputs are [:, :-1], targets [:, 1:]."""
  w = WORKS[work]
  rng = np.random.default_rng(0)
  return [rng.integers(0, w["vocab"], (w["batch"], w["seq"] + 1)).astype(np.int32) for _ in range(N_BATCHES)]


def train_flops_per_token(work: str) -> float:
  """Model FLOPs of one training token (forward + backward = 3 x forward, multiply-add = 2): matmuls only."""
  w = WORKS[work]
  if work == "transformer":
    d, f, t = w["d_model"], w["d_ff"], w["seq"]
    per_layer = 4 * d * d + 2 * d * f          # q, k, v, o projections and the feed-forward
    attention = 2 * t * d                      # q.k and weights.v per token (full T x T, as computed)
    forward = 2 * (w["n_layers"] * (per_layer + attention) + d * w["vocab"])
  else:
    e, h = w["d_embed"], w["d_hidden"]
    gates = 4 * h * (e + h) + 4 * h * (h + h)  # layer 1 reads the embedding, layer 2 the first layer's output
    forward = 2 * (gates + h * w["vocab"])
  return 3.0 * forward
