"""Recurrent language models, as Trax's `RNNLM` and `GRULM`: embeddings, stacked LSTMs or GRUs, logits.

Each recurrent layer scans on its own (its input projection is one matmul over the whole sequence). With
`mode="predict"` every layer keeps its carries in `state`, so a decoder feeds one token per call; the parameter paths
are the same in every mode, so trained params load into the decoder as they are.
"""

from __future__ import annotations

from typing import Callable

from combinax import layers as cl
from combinax.layers.rnn import GRU, LSTM, GRUCell, LSTMCell

_BY_NAME = {"lstm": LSTM, "gru": GRU}
_BY_CELL = {LSTMCell: LSTM, GRUCell: GRU}  # Trax passes a cell (tl.LSTMCell); we run its sequence layer.


def _sequence_layer(rnn_cell) -> Callable[..., cl.Layer]:
  """`(n_units, mode=...) -> layer` over (batch, length, features) from a name, a cell class or such a function."""
  if isinstance(rnn_cell, str):
    if rnn_cell.lower() not in _BY_NAME:
      raise ValueError(f"RNNLM: unknown rnn_cell {rnn_cell!r}; choose one of {sorted(_BY_NAME)}, LSTMCell, "
                       "GRUCell, or pass a function (n_units, mode) -> layer")
    return _BY_NAME[rnn_cell.lower()]
  if rnn_cell in _BY_CELL:
    return _BY_CELL[rnn_cell]
  if not callable(rnn_cell):
    raise ValueError(f"RNNLM: rnn_cell must be a name, a cell class or a function, got {rnn_cell!r}")
  return rnn_cell


def RNNLM(vocab_size: int, d_model: int = 512, n_layers: int = 2, rnn_cell="lstm", dropout: float = 0.1,
          mode: str = "train") -> cl.Layer:
  """A recurrent language model: token ids (batch, length) -> logits (batch, length, vocab_size).

  Args:
    vocab_size: the number of token ids (embedding rows and logits).
    d_model: the width of the embeddings and of every recurrent layer.
    n_layers: the number of stacked recurrent layers (any number; Trax's RNNLM allowed only 2).
    rnn_cell: "lstm" or "gru", the cell classes `LSTMCell`/`GRUCell` (as in Trax), or a function
      `(n_units, mode=...) -> layer` mapping (batch, length, d_model) to (batch, length, n_units). The carry size
      follows from the layer, so Trax's `rnn_cell_d_state_multiplier` is not needed.
    dropout: the dropout rate after the embeddings and after every recurrent layer (when applied with
      `train=True`, in every mode).
    mode: "train" or "eval" (the same model), or "predict" (one chunk of tokens per call; the carries live in
      `state`, and inputs are not shifted: feed the previous token).

  >>> model = RNNLM(vocab_size=16, d_model=8, n_layers=2)
  >>> model.output_signature(ShapeDtype((2, 5), jnp.int32))
  ShapeDtype((2, 5, 16), float32)
  >>> params, _ = model.init(jax.random.key(0), ShapeDtype((2, 5), jnp.int32))
  >>> [path for path in cx.paths(params) if not path.startswith("LSTM_1")]
  ['Dense_0/bias', 'Dense_0/kernel', 'Embedding_0/embedding', 'LSTM_0/input/bias', 'LSTM_0/input/kernel',
   'LSTM_0/recurrent/kernel']
  """
  rnn = _sequence_layer(rnn_cell)
  return cl.Serial(
      cl.ShiftRight(mode=mode),                                          # (batch, length) ids, shifted right
      cl.Embedding(vocab_size, d_model),                                 # (batch, length, d_model)
      cl.Dropout(dropout),
      [[rnn(d_model, mode=mode), cl.Dropout(dropout)] for _ in range(n_layers)],  # (batch, length, d_model)
      cl.Dense(vocab_size),                                              # logits (batch, length, vocab_size)
      name="RNNLM")


def GRULM(vocab_size: int = 256, d_model: int = 512, n_layers: int = 1, mode: str = "train") -> cl.Layer:
  """A GRU language model as Trax's `GRULM`: token ids (batch, length) -> logits (batch, length, vocab_size).

  Args:
    vocab_size: the number of token ids (embedding rows and logits).
    d_model: the width of the embeddings and of every GRU.
    n_layers: the number of stacked GRUs.
    mode: "train" or "eval" (the same model), or "predict" (one chunk of tokens per call, carries in `state`,
      inputs not shifted).

  >>> model = GRULM(vocab_size=16, d_model=8)
  >>> model.output_signature(ShapeDtype((2, 5), jnp.int32))
  ShapeDtype((2, 5, 16), float32)
  >>> print(model)
  GRULM[
    ShiftRight
    Embedding
    GRU[
      input
      ZeroState_out2
      Scan_in2_out2[
        recurrent_in2_out2
      ]
      Select_in2
    ]
    Dense
  ]
  """
  return cl.Serial(
      cl.ShiftRight(mode=mode),                              # (batch, length) ids, shifted right
      cl.Embedding(vocab_size, d_model),                     # (batch, length, d_model)
      [GRU(d_model, mode=mode) for _ in range(n_layers)],    # (batch, length, d_model)
      cl.Dense(vocab_size),                                  # logits (batch, length, vocab_size)
      name="GRULM")


def LSTMSeq2SeqAttn(input_vocab_size: int = 256, target_vocab_size: int = 256, d_model: int = 512,
                    n_encoder_layers: int = 2, n_decoder_layers: int = 2, n_attention_heads: int = 1,
                    attention_dropout: float = 0.0, pad_id: int = 0, mode: str = "train") -> cl.Layer:
  """An LSTM encoder-decoder with attention (Trax's `LSTMSeq2SeqAttn` architecture):
  (source ids, target ids) -> logits (batch, target length, target_vocab_size).

  The encoder's LSTMs read the source; one decoder LSTM reads the shifted target and attends to the encoder (a
  residual attention block that ignores source padding); more LSTMs and a Dense layer make the logits. In predict
  mode the encoder (built as for training) runs once, on the first call (`Cache`); every decoder LSTM keeps its carries.

  >>> model = LSTMSeq2SeqAttn(10, 12, d_model=8, n_encoder_layers=1, n_decoder_layers=1)
  >>> model.output_signature((ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32)))
  ShapeDtype((2, 4, 12), float32)
  """
  encoder = cl.Serial(
      cl.Embedding(input_vocab_size, d_model),                          # source vectors
      [LSTM(d_model) for _ in range(n_encoder_layers)],
      name="encoder")
  return cl.Serial(                                                     # source, target
      cl.Branch(None, cl.PaddingMask(pad_id)),                          # source, mask, target
      cl.Parallel(cl.Cache(encoder, mode=mode), None),                  # enc, mask, target
      cl.Select([2, 0, 1]),                                             # target, enc, mask
      cl.Serial(cl.ShiftRight(mode=mode), cl.Embedding(target_vocab_size, d_model), LSTM(d_model, mode=mode),
                name="pre_attention"),                                  # dec, enc, mask
      cl.Select([0, 1, 1, 2]),                                          # dec, enc, enc, mask
      cl.Residual(cl.AttentionQKV(d_model, n_attention_heads, dropout=attention_dropout)),    # dec, mask
      cl.Select([0], n_in=2),                                           # dec
      [LSTM(d_model, mode=mode) for _ in range(n_decoder_layers)],      # dec
      cl.Dense(target_vocab_size, name="logits"))                       # logits


def TextGenRNN(vocab_size: int = 465, d_embedding: int = 100, n_units: int = 128, n_layers: int = 2,
               mode: str = "train") -> cl.Layer:
  """textgenrnn's character model: a window of ids (batch, length) -> logits of the next id (batch, vocab_size).

  The embeddings and the outputs of every stacked LSTM are concatenated (skip connections to the top), averaged
  over the window by an `AttentionWeightedAverage`, and a Dense layer gives the logits (textgenrnn ends in a softmax;
  apply one to the logits for its probabilities). Params: `embedding/embedding`, `rnn_{1..n_layers}/...` (LSTMs),
  `attention/weights`, `output/{kernel, bias}`; the pretrained weights are in `combinax.pretrained.textgenrnn`.

  Args:
    vocab_size: the number of ids (embedding rows and logits); textgenrnn's 464 characters plus padding id 0.
    d_embedding: the width of the character embeddings.
    n_units: the width of every LSTM.
    n_layers: the number of stacked LSTMs.
    mode: "train" or "eval" (the same model). It reads a whole window on every call and keeps no decoding state,
      so there is no "predict" (`pretrained.textgenrnn.generate` feeds it the last `length` ids each time).

  >>> model = TextGenRNN(vocab_size=12, d_embedding=4, n_units=8)
  >>> model.output_signature(ShapeDtype((2, 40), jnp.int32))
  ShapeDtype((2, 12), float32)
  >>> params, _ = model.init(jax.random.key(0), ShapeDtype((2, 40), jnp.int32))
  >>> [path for path in cx.paths(params) if not path.startswith("rnn_2")]
  ['attention/weights', 'embedding/embedding', 'output/bias', 'output/kernel', 'rnn_1/input/bias',
   'rnn_1/input/kernel', 'rnn_1/recurrent/kernel']
  """
  model = cl.Serial(                                                      # ids (batch, length)
      cl.Embedding(vocab_size, d_embedding, name="embedding"),            # e
      [cl.Branch(LSTM(n_units, name=f"rnn_{i + 1}"), None)                # r_i, ..., r_1, e
       for i in range(n_layers)],                                         # each LSTM reads the one below it
      cl.Select(list(reversed(range(n_layers + 1)))),                     # e, r_1, ..., r_n
      cl.Concatenate(n_layers + 1),                                       # (batch, length, d_emb + n * n_units)
      cl.AttentionWeightedAverage(name="attention"),                      # (batch, d_emb + n * n_units)
      cl.Dense(vocab_size, name="output"),                                # logits (batch, vocab_size)
      name="TextGenRNN")
  cl.check_mode(model, mode, decodes=False)
  return model
