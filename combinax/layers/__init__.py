"""combinax.layers: pure (init, apply) layers and the combinators that compose them on a data stack. Every layer and
layer factory is gin-configurable (`Dense.use_bias = False`, `@Gelu`), registered at the end of this file; the
combinators and control flow (`Serial`, `Scan`, `Repeat`, ...) are structure and stay plain."""

from combinax.layers import initializers
from combinax.layers.activations import (Elu, FastGelu, Gelu, Glu, HardSigmoid, HardSwish, LeakyRelu, Relu, Selu,
                                         Sigmoid, Silu, Softplus, Swish, Tanh)
from combinax.layers.audio import CheckFrames
from combinax.layers.attention import (Attention, AttentionQKV, CausalAttention, DotProductAttention,
                                       EncoderDecoderMask, PaddingMask, ShiftRight, attend)
from combinax.layers.base import Layer, LayerError, check_mode, child_rng, init_and_signature, walk
from combinax.layers.combinators import (Add, Branch, Concatenate, Drop, Dup, Fn, Gate, Multiply, Parallel,
                                         Residual, Select, Serial, Split, SubtractTop, Swap)
from combinax.layers.control import BatchLeadingAxes, Bidirectional, Cache, Chunk, Cond, Prefill, Remat, Scan
from combinax.layers.convolution import AvgPool, CausalConv, Conv, MaxPool, SumPool
from combinax.layers.core import (ArgMax, Dense, Dropout, Embedding, Flatten, LogSoftmax, Max, Mean, Softmax,
                                  ScaleAndShift, StopGradient, Sum, TiedLogits, ToFloat, Weights)
from combinax.layers.contrastive import (PairAccuracy, SigmoidContrastiveLoss, SoftmaxContrastiveLoss,
                                         TemperatureAndBias)
from combinax.layers.distillation import DistillationLoss
from combinax.layers.lora import LoRA
from combinax.layers.retro import ChunkedAttention, ChunkedCrossAttention
from combinax.layers.losses import (BinaryCrossEntropy, CategoryCrossEntropy, L2Loss,
                                    WeightedCategoryCrossEntropy)
from combinax.layers.metrics import Accuracy, SequenceAccuracy, WeightedCategoryAccuracy
from combinax.layers.normalization import BatchNorm, LayerNorm, RMSNorm
from combinax.layers.pooling import AttentionWeightedAverage
from combinax.layers.positional import LearnedPositionalEncoding, PositionalEncoding, rotary, sinusoids
from combinax.layers.repeat import Interleave, Repeat
from combinax.layers.rnn import GRU, LSTM, GRUCell, LSTMCell
from combinax.layers.scopes import Combinator
from combinax.layers.vision import CheckImages, LearnedToken, PositionalEncoding2D, sincos_2d

from combinax.configurable import register as _register  # noqa: E402

_STRUCTURE = {f"combinax.layers.{m}" for m in ("base", "scopes", "combinators", "control", "repeat")}
_register(globals(), "combinax.layers",
          [name for name, x in list(globals().items()) if name[0].isupper() and x.__module__ not in _STRUCTURE])
