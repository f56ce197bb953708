"""llama.cpp worker (`llama-cpp-python`) for `benchmarks/inference.py`: the GGUF file as it is (its blocks kept
packed), greedy decoding with llama.cpp's own sampler at temperature 0."""

import generation

args = generation.parse_args(__doc__)

import llama_cpp  # noqa: E402  (after parsing: --help needs no engine)


def main():
  model = llama_cpp.Llama(args.gguf, n_ctx=max(args.context, len(args.prompt) + args.new + 8), n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, verbose=False)

  def generate(n):
    # `reset` empties the context: without it llama.cpp would keep the prompt's cache from the last call and skip
    # its prefill, which the other engines do every time.
    model.reset()
    tokens = []
    for token in model.generate(args.prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                reset=True):
      tokens.append(token)
      if len(tokens) == n:
        break
    return tokens

  size = llama_cpp.llama_model_size(model.model) / 1e6
  generation.serve(generate, args.new, engine=f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
                   weights_mb=size)


if __name__ == "__main__":
  main()
