"""One example of every public layer, with an input signature: the contract tests run over all of them."""

import jax
import jax.numpy as jnp

from combinax import ShapeDtype
from combinax import layers as cl

F, I, B = jnp.float32, jnp.int32, jnp.bool_


def S(*shape, dtype=F):
  return ShapeDtype(shape, dtype)


def make_inputs(sig, seed=1):
  """Random arrays matching `sig`; integers lie in [0, 3) so they are valid ids and class targets; masks are
  mostly True."""
  if isinstance(sig, tuple):
    return tuple(make_inputs(s, seed + i) for i, s in enumerate(sig))
  key = jax.random.key(seed)
  if sig.dtype == jnp.bool_:
    return jax.random.bernoulli(key, 0.7, sig.shape)
  if jnp.issubdtype(sig.dtype, jnp.integer):
    return jax.random.randint(key, sig.shape, 0, 3, sig.dtype)
  return jax.random.normal(key, sig.shape, sig.dtype)


def _positive_sum():
  return cl.Fn("PositiveSum", lambda x: jnp.sum(x) > 0)


def _tied():
  embed = cl.Embedding(10, 4)
  return cl.Serial(embed, cl.Relu(), cl.TiedLogits(embed))


CATALOGUE = {
    # Combinators.
    "Serial": (lambda: cl.Serial(cl.Dense(4), cl.Relu(), cl.Dense(3)), S(2, 5)),
    "Parallel": (lambda: cl.Parallel(cl.Dense(3), cl.Relu()), (S(2, 5), S(2, 4))),
    "Branch": (lambda: cl.Branch(cl.Dense(3), cl.Relu()), S(2, 5)),
    "Residual": (lambda: cl.Residual(cl.LayerNorm(), cl.Dense(5)), S(2, 5)),
    "Residual_shortcut": (lambda: cl.Residual(cl.Dense(3), shortcut=cl.Dense(3)), S(2, 5)),
    "Select": (lambda: cl.Select([2, 0]), (S(2), S(3), S(4))),
    "Dup": (cl.Dup, S(2, 3)),
    "Swap": (cl.Swap, (S(2), S(3))),
    "Drop": (cl.Drop, S(2, 3)),
    "Fn": (lambda: cl.Fn("Square", lambda x: x * x), S(2, 3)),
    "Concatenate": (lambda: cl.Concatenate(3, axis=-1), (S(2, 1), S(2, 2), S(2, 3))),
    "Split": (lambda: cl.Split(3, axis=-1), S(2, 6)),
    "Add": (cl.Add, (S(2, 3), S(2, 3))),
    "SubtractTop": (cl.SubtractTop, (S(2, 3), S(2, 3))),
    "Multiply": (cl.Multiply, (S(2, 3), S(2, 3))),
    "Gate": (cl.Gate, (S(2, 3), S(2, 3), S(2, 3))),
    "Scan": (lambda: cl.Scan(cl.Serial(cl.Add(), cl.Dense(3), cl.Dup())), (S(4, 3), S(3))),
    "Scan_axis1_remat": (lambda: cl.Scan(cl.Serial(cl.Add(), cl.Dup()), axis=1, remat=True), (S(2, 4), S(2))),
    "Cond": (lambda: cl.Cond(_positive_sum(), cl.Dense(5)), S(2, 5)),
    "Cond_false": (lambda: cl.Cond(_positive_sum(), cl.Dense(5), cl.Dropout(0.5)), S(2, 5)),
    "Chunk": (lambda: cl.Chunk(cl.Dense(3), chunk_size=2), S(4, 5)),
    "BatchLeadingAxes": (lambda: cl.BatchLeadingAxes(cl.Flatten()), S(2, 3, 4, 5)),
    "Bidirectional": (lambda: cl.Bidirectional(cl.Dense(3)), S(2, 4, 5)),
    "Remat": (lambda: cl.Remat(cl.Serial(cl.Dense(3), cl.Tanh())), S(2, 5)),
    "Scan_predict": (lambda: cl.Scan(cl.Serial(cl.Add(), cl.Dup()), mode="predict"), (S(4, 3), S(3))),
    "ShiftRight": (cl.ShiftRight, S(2, 5, dtype=I)),
    "Repeat": (lambda: cl.Repeat(cl.Serial(cl.Dense(5), cl.Tanh()), 3, name="blocks"), S(2, 5)),
    "Repeat_unrolled_remat": (lambda: cl.Repeat(cl.Residual(cl.Dense(5)), 2, scan=False, remat=True), S(2, 5)),
    "Repeat_predict_state": (lambda: cl.Repeat(cl.CausalAttention(4, 2, mode="predict", max_len=6), 2), S(2, 3, 4)),
    "Interleave": (lambda: cl.Interleave(cl.Serial(cl.Dense(5), cl.Tanh()), 4, cl.Residual(cl.Dense(5)), every=2),
                   S(2, 5)),
    "Interleave_unrolled_remat_predict": (
        lambda: cl.Interleave(cl.CausalAttention(4, 2, mode="predict", max_len=6), 2,
                              cl.Residual(cl.ChunkedCrossAttention(4, n_heads=2, chunk_size=2, mode="predict")),
                              every=1, scan=False, remat="dots", inserted_name="retro"),
        (S(2, 3, 4), S(2, 2, 1, 2, 4))),
    "Cache": (lambda: cl.Cache(cl.Dense(3)), S(2, 5)),
    "LoRA": (lambda: cl.LoRA(cl.Serial(cl.Dense(4, name="up"), cl.Dense(3, name="down")), targets="*/kernel", rank=2),
             S(2, 5)),
    "Cache_predict": (lambda: cl.Cache(cl.Serial(cl.Dense(3), cl.Dup()), mode="predict"), S(2, 5)),
    "Prefill": (lambda: cl.Prefill(cl.Dense(3), cl.Fn("Join", lambda p, x: jnp.concatenate([p, x], axis=1))),
                (S(2, 4, 5), S(2, 2, 3))),
    "Prefill_predict": (lambda: cl.Prefill(cl.Dense(3), cl.Serial(
        cl.Fn("AddPooled", lambda p, x: x + jnp.sum(p, axis=1, keepdims=True)), cl.Dense(2)), mode="predict"),
                        (S(2, 4, 5), S(2, 2, 3))),
    # Attention and positions.
    "PaddingMask": (cl.PaddingMask, S(2, 5, dtype=I)),
    "EncoderDecoderMask": (cl.EncoderDecoderMask, (S(2, 3, 4), S(2, 1, 1, 5, dtype=B))),
    "DotProductAttention": (lambda: cl.DotProductAttention(2, dropout=0.5, fast=False),
                            (S(2, 3, 4), S(2, 5, 4), S(2, 5, 4), S(2, 1, 1, 5, dtype=B))),
    "AttentionQKV": (lambda: cl.AttentionQKV(4, n_heads=2, n_kv_heads=1),
                     (S(2, 3, 4), S(2, 5, 6), S(2, 5, 6), S(2, 1, 1, 5, dtype=B))),
    "Attention": (lambda: cl.Attention(4, n_heads=2, rotary="interleaved"), (S(2, 3, 4), S(2, 1, 1, 3, dtype=B))),
    "CausalAttention": (lambda: cl.CausalAttention(8, n_heads=4, n_kv_heads=2, dropout=0.1), S(2, 3, 8)),
    "CausalAttention_predict": (lambda: cl.CausalAttention(8, n_heads=2, rotary="half", use_bias=False,
                                                           mode="predict", max_len=5), S(2, 3, 8)),
    "CausalAttention_prefix": (lambda: cl.CausalAttention(8, n_heads=2, prefix=True, dropout=0.1),
                               (S(2, 3, 8), S(2, dtype=I))),
    "CausalAttention_prefix_predict": (lambda: cl.CausalAttention(8, n_heads=2, prefix=True, mode="predict",
                                                                  max_len=5), (S(2, 3, 8), S(2, dtype=I))),
    "ChunkedAttention": (lambda: cl.ChunkedAttention(2, chunk_size=2, dropout=0.5, fast=False),
                         (S(2, 6, 4), S(2, 3, 2, 3, 4), S(2, 3, 2, 3, 4))),
    "ChunkedCrossAttention": (lambda: cl.ChunkedCrossAttention(8, n_heads=2, chunk_size=3),
                              (S(2, 6, 8), S(2, 2, 2, 4, 5))),
    "ChunkedCrossAttention_predict": (lambda: cl.ChunkedCrossAttention(8, n_heads=2, n_kv_heads=1, chunk_size=2,
                                                                       mode="predict"),
                                      (S(2, 3, 8), S(2, 3, 2, 4, 5))),
    "PositionalEncoding": (cl.PositionalEncoding, S(2, 3, 6)),
    "PositionalEncoding_predict": (lambda: cl.PositionalEncoding(mode="predict"), S(2, 3, 6)),
    "LearnedPositionalEncoding": (lambda: cl.LearnedPositionalEncoding(8), S(2, 3, 6)),
    "TiedLogits": (lambda: _tied(), S(2, 3, dtype=I)),
    # Recurrent.
    "LSTMCell": (lambda: cl.LSTMCell(4), (S(2, 3), S(2, 4), S(2, 4))),
    "GRUCell": (lambda: cl.GRUCell(4), (S(2, 3), S(2, 4))),
    "LSTM": (lambda: cl.LSTM(4), S(2, 5, 3)),
    "GRU": (lambda: cl.GRU(4), S(2, 5, 3)),
    "LSTM_predict": (lambda: cl.LSTM(4, mode="predict"), S(2, 1, 3)),
    "GRU_predict": (lambda: cl.GRU(4, mode="predict"), S(2, 1, 3)),
    # Core.
    "Dense": (lambda: cl.Dense(3), S(2, 5)),
    "Dense_nobias": (lambda: cl.Dense(3, use_bias=False, kernel_initializer="orthogonal"), S(2, 4, 5)),
    "Embedding": (lambda: cl.Embedding(10, 4), S(2, 3, dtype=I)),
    "Dropout": (lambda: cl.Dropout(0.5), S(2, 5)),
    "Flatten": (cl.Flatten, S(2, 3, 4)),
    "LogSoftmax": (cl.LogSoftmax, S(2, 5)),
    "Softmax": (cl.Softmax, S(2, 5)),
    "Mean": (cl.Mean, S(2, 5)),
    "Sum": (cl.Sum, S(2, 5)),
    "Max": (cl.Max, S(2, 5)),
    "ArgMax": (cl.ArgMax, S(2, 5)),
    "StopGradient": (cl.StopGradient, S(2, 5)),
    "ToFloat": (cl.ToFloat, S(2, 5, dtype=I)),
    "Weights": (lambda: cl.Weights("normal", shape=(3, 4)), ()),
    "ScaleAndShift": (cl.ScaleAndShift, S(2, 5)),
    # Activations.
    **{name: (getattr(cl, name), S(2, 6)) for name in
       ["Relu", "Gelu", "FastGelu", "Sigmoid", "Tanh", "Silu", "Swish", "Elu", "Selu", "LeakyRelu", "Softplus",
        "Glu", "HardSwish", "HardSigmoid"]},
    # Normalization.
    "LayerNorm": (cl.LayerNorm, S(4, 3, 5)),
    "RMSNorm": (cl.RMSNorm, S(4, 3, 5)),
    "BatchNorm": (cl.BatchNorm, S(4, 3, 5)),
    # Convolution and pooling.
    "Conv1D": (lambda: cl.Conv(4, (3,)), S(2, 8, 3)),
    "Conv2D": (lambda: cl.Conv(4, (3, 3), strides=(2, 2), padding="SAME"), S(2, 6, 6, 3)),
    "Conv3D": (lambda: cl.Conv(2, (2, 2, 2), kernel_dilation=(1, 1, 2)), S(1, 4, 4, 4, 2)),
    "Conv2D_leading_axes": (lambda: cl.Conv(2, (2, 2)), S(3, 2, 4, 4, 1)),
    "Conv2D_depthwise": (lambda: cl.Conv(6, (3, 3), padding="SAME", groups=6), S(2, 5, 5, 6)),
    "Conv2D_groups": (lambda: cl.Conv(4, (1, 3), groups=2), S(2, 1, 5, 6)),
    "CausalConv": (lambda: cl.CausalConv(4, 3, dilation=2), S(2, 8, 3)),
    "MaxPool": (lambda: cl.MaxPool((2, 2)), S(2, 4, 4, 3)),
    "AvgPool": (lambda: cl.AvgPool((3, 3), strides=(1, 1), padding="SAME"), S(2, 4, 4, 3)),
    "SumPool": (lambda: cl.SumPool((2,)), S(2, 6, 3)),
    # Contrastive (dual encoders).
    "SigmoidContrastiveLoss": (cl.SigmoidContrastiveLoss, (S(4, 3), S(4, 3), S(2))),
    "SoftmaxContrastiveLoss": (cl.SoftmaxContrastiveLoss, (S(4, 3), S(4, 3), S(2))),
    "TemperatureAndBias": (cl.TemperatureAndBias, ()),
    "PairAccuracy": (cl.PairAccuracy, (S(4, 3), S(4, 3), S(2))),
    # Vision.
    "CheckImages": (lambda: cl.CheckImages(size=(4, 6), channels=3, multiple_of=2), S(2, 4, 6, 3)),
    "CheckFrames": (lambda: cl.CheckFrames(5, max_frames=10), S(2, 7, 5)),
    "PositionalEncoding2D": (cl.PositionalEncoding2D, S(2, 3, 4, 5)),
    "PositionalEncoding2D_sincos": (lambda: cl.PositionalEncoding2D("sincos"), S(2, 3, 4, 8)),
    "LearnedToken": (lambda: cl.LearnedToken("glorot_uniform"), S(2, 3, 4, 5)),
    "AttentionWeightedAverage": (cl.AttentionWeightedAverage, S(2, 5, 3)),
    # Losses and metrics.
    "WeightedCategoryCrossEntropy": (lambda: cl.WeightedCategoryCrossEntropy(label_smoothing=0.1),
                                     (S(2, 3, 5), S(2, 3, dtype=I), S(2, 3))),
    "CategoryCrossEntropy": (cl.CategoryCrossEntropy, (S(2, 3, 5), S(2, 3, dtype=I))),
    "BinaryCrossEntropy": (cl.BinaryCrossEntropy, (S(4,), S(4,))),
    "L2Loss": (cl.L2Loss, (S(2, 3), S(2, 3), S(2, 3))),
    "DistillationLoss": (lambda: cl.DistillationLoss(2.0, 0.5), (S(2, 3, 5), S(2, 3, 5), S(2, 3, dtype=I), S(2, 3))),
    "DistillationLoss_top_k": (lambda: cl.DistillationLoss(2.0, 0.5, top_k=True),
                               (S(2, 3, 5), S(2, 3, 2), S(2, 3, 2, dtype=I), S(2, 3, dtype=I), S(2, 3))),
    "WeightedCategoryAccuracy": (cl.WeightedCategoryAccuracy, (S(2, 3, 5), S(2, 3, dtype=I), S(2, 3))),
    "Accuracy": (cl.Accuracy, (S(2, 3, 5), S(2, 3, dtype=I))),
    "SequenceAccuracy": (cl.SequenceAccuracy, (S(2, 3, 5), S(2, 3, dtype=I), S(2, 3))),
}
