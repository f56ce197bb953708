"""combinax.models: models built only from `combinax.layers` layers and combinators. The models are gin-configurable
(`TransformerLM.d_model = 128`), registered here; `@TransformerOptions()` makes options for models of your own."""

import gin as _gin

from combinax.configurable import register as _register
from combinax.models.mlp import MLP
from combinax.models.resnet import (BasicBlock, BottleneckBlock, DigitsCNN, GlobalAvgPool, PreActBlock, ResNet,
                                    Resnet50, WideResnet)
from combinax.models.rnn import GRULM, RNNLM, LSTMSeq2SeqAttn, TextGenRNN
from combinax.models.transformer import (DecoderBlock, EncoderBlock, FeedForward, Norm, Pool, RetroOptions,
                                         Transformer, TransformerDecoder, TransformerEncoder, TransformerLM,
                                         TransformerOptions)
from combinax.models.contrastive import DualEncoder, L2Normalize, TextTower
from combinax.models.image_prefix import ImagePrefixLM
from combinax.models.vision import ViT
from combinax.models.audio import AudioEncoder
from combinax.models.ocr import TextRecognizer
from combinax.models.adapted import LoRAModel

_register(globals(), "combinax.models", ["MLP", "ResNet", "Resnet50", "WideResnet", "DigitsCNN", "RNNLM", "GRULM",
                                          "LSTMSeq2SeqAttn", "TextGenRNN", "TransformerLM", "TransformerEncoder",
                                          "Transformer", "ViT", "DualEncoder", "TextTower", "ImagePrefixLM",
                                          "AudioEncoder", "LoRAModel", "TextRecognizer"])
_gin.external_configurable(TransformerOptions, module="combinax.models")  # gin-made options; models build their own
_gin.external_configurable(RetroOptions, module="combinax.models")        # TransformerLM.retro = @RetroOptions()
