"""Reference outputs of textgenrnn's pretrained model from an independent PyTorch forward pass (never imports combinax).

Run by hand, in a virtual environment of its own with torch (CPU), numpy and h5py, on the files of the pip package
`textgenrnn==2.0.0` (installed there with `pip install --no-deps textgenrnn==2.0.0`, or found in any other
environment and named with --folder). The fixture in the repository was made with:

  /work/refvenv/bin/python tools/textgenrnn_reference.py --folder /work/venv/lib/python3.11/site-packages/textgenrnn

(torch 2.13.0+cpu, numpy 2.4.6, h5py 3.16.0). It writes `tests/pretrained/fixtures/textgenrnn_reference.json`:

- `windows`: the model inputs for PREFIXES: the vocabulary ids of "<s>" and the prefix's characters (0 for a character
  outside the vocabulary, such as a newline), the last 40 of them, left-padded with 0 (Keras's pad_sequences);
- `probabilities`: the model's softmax outputs for each window, float32 (465 values each), and `float64_gap`, the
  largest difference between them and the same forward pass in float64 (how much float32 rounding there is);
- `generated`: textgenrnn's generation loop with the reproducible sampling rule of `sample` (below) for GENERATE.

The model is the Keras one of textgenrnn's model.py: Embedding(465, 100) -> LSTM(128) -> LSTM(128) (sigmoid gates),
the concatenation [embedded, rnn_1, rnn_2] averaged over time by AttentionWeightedAverage, Dense(465) with a softmax.
The LSTM weights were written by Keras's CuDNNLSTM; torch.nn.LSTM uses cuDNN's own layout, so they are laid out here
as cuDNN read them: for each gate (i, f, c, o), the (d_in, n) Keras variable is a flat buffer that cuDNN reads,
row-major, as its (n, d_in) input matrix (`weight_ih` block = `kernel_gate.reshape(n, d_in)`, no transposition), the
(n, n) recurrent variable likewise (`weight_hh` block = `recurrent_kernel_gate` as it is), and the 1024 biases are
cuDNN's input biases (`bias_ih`, first 512) and recurrent biases (`bias_hh`, last 512).
"""

import argparse
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "pretrained" / "fixtures" / "textgenrnn_reference.json"
META, WINDOW, EPSILON = "<s>", 40, 1e-7
PREFIXES = ["", "The quick brown fox jumps over", "A longer text than the window,\nwith a newline and more words."]
GENERATE = [dict(prefix="", temperature=0.0, seed=0, max_length=100),
            dict(prefix="The ", temperature=0.5, seed=0, max_length=100)]


class KerasTextgenrnn(torch.nn.Module):
  """textgenrnn's Keras model in torch, from the arrays of its .hdf5 file."""

  def __init__(self, h5, dtype):
    super().__init__()
    get = lambda name: torch.tensor(np.asarray(h5[name]), dtype=dtype)
    table = get("embedding/embedding/embeddings:0")
    self.embedding = torch.nn.Embedding(*table.shape, dtype=dtype)
    self.rnns = torch.nn.ModuleList()
    for layer in ("rnn_1", "rnn_2"):
      kernel, recurrent = get(f"{layer}/{layer}/kernel:0"), get(f"{layer}/{layer}/recurrent_kernel:0")
      bias = get(f"{layer}/{layer}/bias:0")
      d_in, n = kernel.shape[0], recurrent.shape[0]
      rnn = torch.nn.LSTM(d_in, n, batch_first=True, dtype=dtype)
      with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.cat([k.reshape(n, d_in) for k in kernel.split(n, dim=1)]))
        rnn.weight_hh_l0.copy_(torch.cat([k.reshape(n, n) for k in recurrent.split(n, dim=1)]))
        rnn.bias_ih_l0.copy_(bias[:4 * n])
        rnn.bias_hh_l0.copy_(bias[4 * n:])
      self.rnns.append(rnn)
    with torch.no_grad():
      self.embedding.weight.copy_(table)
    self.attention = get("attention/attention/attention_W:0")   # (356, 1)
    self.out_kernel, self.out_bias = get("output/output/kernel:0"), get("output/output/bias:0")

  def forward(self, ids):
    embedded = self.embedding(ids)
    outputs, x = [embedded], embedded
    for rnn in self.rnns:
      x, _ = rnn(x)
      outputs.append(x)
    features = torch.cat(outputs, dim=-1)                          # (batch, 40, 356)
    logits = (features @ self.attention)[..., 0]                   # (batch, 40)
    weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + EPSILON)
    pooled = (features * weights[..., None]).sum(dim=1)
    return torch.softmax(pooled @ self.out_kernel + self.out_bias, dim=-1)


def window(vocab, text_items):
  """The last 40 ids of the items ("<s>" or characters), left-padded with 0."""
  ids = [vocab.get(item, 0) for item in text_items][-WINDOW:]
  return [0] * (WINDOW - len(ids)) + ids


def sample(probs, temperature, rng):
  """Argmax at temperature 0; else q = exp(log(p + 1e-7) / T) normalised, the first id whose cumulative q exceeds one
  uniform draw; id 0 is replaced by the second largest."""
  p = np.asarray(probs, dtype=np.float64)
  if not temperature:
    q = p
    index = int(p.argmax())
  else:
    scaled = np.log(p + EPSILON) / temperature
    q = np.exp(scaled - scaled.max())
    q = q / q.sum()
    index = int(np.searchsorted(np.cumsum(q), rng.random(), side="right"))
    index = min(index, len(q) - 1)
  if index == 0:
    index = int(np.argsort(q, kind="stable")[-2])
  return index


def generate(model, vocab, prefix, temperature, seed, max_length):
  chars = {i: c for c, i in vocab.items()}
  rng = np.random.default_rng(seed)
  text = [META] + list(prefix)
  while len(text) < max_length:
    with torch.no_grad():
      probs = model(torch.tensor([window(vocab, text)]))[0].numpy()
    text.append(chars[sample(probs, temperature, rng)])
    if text[-1] == META:
      break
  text = text[1:]
  if META in text:
    text.remove(META)
  return "".join(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", help="the textgenrnn package folder (default: the installed package's)")
  parser.add_argument("--out", default=str(OUT))
  args = parser.parse_args()
  folder = Path(args.folder or list(importlib.util.find_spec("textgenrnn").submodule_search_locations)[0])
  vocab = json.loads((folder / "textgenrnn_vocab.json").read_text(encoding="utf-8"))
  torch.set_num_threads(1)
  with h5py.File(folder / "textgenrnn_weights.hdf5", "r") as h5:
    model32, model64 = KerasTextgenrnn(h5, torch.float32), KerasTextgenrnn(h5, torch.float64)
  windows = [window(vocab, [META] + list(prefix)) for prefix in PREFIXES]
  with torch.no_grad():
    probs = model32(torch.tensor(windows)).numpy()
    exact = model64(torch.tensor(windows)).numpy()
  generated = [dict(setting, text=generate(model32, vocab, **setting)) for setting in GENERATE]
  fixture = {
      "source": "textgenrnn==2.0.0 textgenrnn_weights.hdf5, tools/textgenrnn_reference.py, torch " + torch.__version__,
      "prefixes": PREFIXES,
      "windows": windows,
      "probabilities": [[float(str(v)) for v in row] for row in probs.astype(np.float32)],
      "float64_gap": float(np.abs(probs.astype(np.float64) - exact).max()),
      "generated": generated,
  }
  Path(args.out).write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  print(f"wrote {args.out}: float32 vs float64 {fixture['float64_gap']:.2e}")
  for item in generated:
    print(f"{item['prefix']!r} T={item['temperature']}: {item['text']!r}")


if __name__ == "__main__":
  main()
