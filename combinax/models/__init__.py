"""combinax.models: models built only from `combinax.layers` layers and combinators.

The models are gin-configurable (`TransformerLM.d_model = 128`), registered here. So is `TransformerOptions`, for
models of your own built from the blocks (`MyModel.options = @TransformerOptions()`); the shipped models build
theirs from their own arguments, which gin's bindings of `TransformerOptions` do not reach.
"""

import gin as _gin

from combinax.configurable import register as _register

from combinax.models.mlp import MLP
from combinax.models.resnet import (BasicBlock, BottleneckBlock, DigitsCNN, GlobalAvgPool, PreActBlock, ResNet,
                                    Resnet50, WideResnet)
from combinax.models.rnn import GRULM, RNNLM, LSTMSeq2SeqAttn, TextGenRNN
from combinax.models.transformer import (DecoderBlock, EncoderBlock, FeedForward, Norm, Pool, Transformer,
                                         TransformerDecoder, TransformerEncoder, TransformerLM, TransformerOptions)

_register(globals(), "combinax.models", ["MLP", "ResNet", "Resnet50", "WideResnet", "DigitsCNN", "RNNLM", "GRULM",
                                          "LSTMSeq2SeqAttn", "TextGenRNN", "TransformerDecoder", "TransformerLM",
                                          "TransformerEncoder", "Transformer"])
_gin.external_configurable(TransformerOptions, module="combinax.models")
