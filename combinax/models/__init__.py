"""combinax.models: models built only from `combinax.layers` layers and combinators (each gin-configurable)."""

from combinax.models.mlp import MLP
from combinax.models.resnet import (BasicBlock, BottleneckBlock, DigitsCNN, GlobalAvgPool, PreActBlock, ResNet,
                                    Resnet50, WideResnet)
from combinax.models.rnn import GRULM, RNNLM, LSTMSeq2SeqAttn, TextGenRNN
from combinax.models.transformer import (DecoderBlock, EncoderBlock, FeedForward, Norm, Pool, Transformer,
                                         TransformerDecoder, TransformerEncoder, TransformerLM, TransformerOptions)
