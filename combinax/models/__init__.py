"""combinax.models: models built only from `combinax.layers` layers and combinators (each gin-configurable)."""

from combinax.models.rnn import GRULM, RNNLM, LSTMSeq2SeqAttn
from combinax.models.transformer import (DecoderBlock, EncoderBlock, FeedForward, Norm, Transformer, TransformerDecoder,
                                         TransformerEncoder, TransformerLM)
