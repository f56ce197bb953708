"""PyTorch (eager) worker for `benchmarks/compare.py`: the work of `work.py`, written with torch.nn modules."""

import math

import numpy as np
import torch
from torch import nn

import protocol
import work


class TransformerLM(nn.Module):
  """Pre-LN decoder-only LM: nn.TransformerEncoderLayer(norm_first) blocks under a causal mask."""

  def __init__(self, vocab, d_model, n_layers, n_heads, d_ff, seq, dropout, **_):
    super().__init__()
    self.embed = nn.Embedding(vocab, d_model)
    position = torch.arange(seq)[:, None]
    rate = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(seq, d_model)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    self.register_buffer("positions", table)
    self.dropout = nn.Dropout(dropout)
    layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, activation="relu", batch_first=True,
                                       norm_first=True)
    self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
    self.final_norm = nn.LayerNorm(d_model)
    self.logits = nn.Linear(d_model, vocab)
    self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

  def forward(self, ids):
    x = self.dropout(self.embed(ids) + self.positions[:ids.shape[1]])
    x = self.blocks(x, mask=self.mask, is_causal=True)
    return self.logits(self.final_norm(x))


class LSTMLM(nn.Module):

  def __init__(self, vocab, d_embed, d_hidden, n_layers, **_):
    super().__init__()
    self.embed = nn.Embedding(vocab, d_embed)
    self.lstm = nn.LSTM(d_embed, d_hidden, n_layers, batch_first=True)
    self.logits = nn.Linear(d_hidden, vocab)

  def forward(self, ids):
    return self.logits(self.lstm(self.embed(ids))[0])


def main():
  args = protocol.parse_args(__doc__)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  config = work.WORKS[args.work]
  model = (TransformerLM if args.work == "transformer" else LSTMLM)(**config)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
  loss_fn = nn.CrossEntropyLoss()
  batches = [torch.from_numpy(b.astype(np.int64)) for b in work.batches(args.work)]

  def step(i):
    batch = batches[i % len(batches)]
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()

  a = torch.randn(protocol.MATMUL_SIZE, protocol.MATMUL_SIZE)
  protocol.serve(step, args.warmup, sum(p.numel() for p in model.parameters()), f"PyTorch {torch.__version__}",
                 matmul=lambda: torch.mm(a, a))


if __name__ == "__main__":
  main()
