"""PyTorch `transformers` worker for `benchmarks/inference.py`: the GGUF file dequantized to float32 by
transformers' own GGUF reader, greedy `generate` with its KV cache."""

import os

import generation

args = generation.parse_args(__doc__)

import torch  # noqa: E402
import transformers  # noqa: E402


def main():
  torch.set_num_threads(args.threads)
  folder, name = os.path.split(args.gguf)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  model.eval()
  # No end-of-sequence token: generation goes on past it as the other engines do (`min_new_tokens` would forbid
  # the token instead, and the text would differ from there).
  model.generation_config.eos_token_id = None
  prompt = torch.tensor([args.prompt])

  @torch.inference_mode()
  def generate(n):
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                         do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()

  size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
  generation.serve(generate, args.new, engine=f"PyTorch {torch.__version__} + transformers {transformers.__version__}",
                   weights_mb=size)


if __name__ == "__main__":
  main()
