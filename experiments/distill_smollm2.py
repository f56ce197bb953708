"""Issue 19's experiment: a 4-layer student of SmolLM2-135M on the bundled King James Bible, trained four ways at
equal steps on equal data, against its teachers:

  hard labels       the student recipe's loss, next-token cross-entropy (DistillationLoss with alpha=0, which the
                    tests show equals WeightedCategoryCrossEntropy bitwise), on the batches the top-k were stored for
  distilled         configs/distill_smollm2_kjv.gin: alpha=0.5, T=2 against the stored top-32 logits of SmolLM2 as
                    shipped (a chat model), same batches
  distilled, tuned  the same from SmolLM2 fine-tuned on the same KJV batches first (configs/teacher_smollm2_kjv.gin)
  synthetic         configs/student_smollm2_kjv.gin on text SmolLM2 wrote (combinax-decode --samples), no KJV text

Every student starts from the same 4 of SmolLM2's 30 blocks (0, 10, 19, 29) and its embedding. `--seeds` runs hard
and distilled-from-the-tuned-teacher once per seed (the order the stored batches are visited in; both see the same
batches, each once); distilled from SmolLM2 as shipped and synthetic once.
Then, in this process: held-out cross-entropy on the first `--eval-batches` batches of KJV's test split for every
student and the teacher, and greedy decoding speed (batch 1, 16 prompt tokens + 128 new, float32, interleaved
rounds) of a student and the teacher, and of each teacher with its first distilled student as speculative draft.

Each stage is skipped when its output exists (the training runs resume through combinax-train's own resume), so
the command can be rerun after a stop. Everything goes to --workdir; results.json and a Markdown table at the end.

    python experiments/distill_smollm2.py --workdir runs/distill_smollm2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"
# KJV-style openings (written here, not verses of the corpus): the synthetic corpus's prompts, fed as raw text.
OPENINGS = ["And it came to pass", "And the LORD spake unto", "Blessed is the man", "In those days",
            "And he said unto them,", "Thus saith the LORD", "Now the sons of", "And when they were come"]


def run(command: list[str], log: Path):
  """Runs a command, its output appended to `log`; stops the experiment (saying where to look) if it fails."""
  with open(log, "a") as f:
    f.write(f"$ {' '.join(command)}\n")
    f.flush()
    start = time.time()
    code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
  if code:
    sys.exit(f"{command[0]} failed (exit {code}); its output is in {log}")
  return time.time() - start


def shape_bindings(args, topk: bool = True) -> list[str]:
  steps = args.steps
  return [f"--config=distill.teacher_topk.batches = {steps}"] * topk + [f"--config=train/lm_pipeline.length = {args.length}", f"--config=eval/lm_pipeline.length = {args.length}",
          f"--config=Trainer.steps = {steps}", f"--config=cosine.total_steps = {steps}",
          f"--config=Trainer.checkpoint_every = {steps}", f"--config=EvalTask.eval_every = {steps}"]


def train_on_topk(args, work: Path, name: str, seed: int, alpha: float, log: Path, topk: str = "topk") -> Path:
  out = work / f"{name}-seed{seed}"
  topk = work / topk
  if (out / f"step_{args.steps:08d}").exists():   # finished (rerunning it would check its configuration again)
    return out
  run(["combinax-train", "--config_file=configs/distill_smollm2_kjv.gin", *shape_bindings(args),
       "--config=TrainTask.data = @TopKBatches()", f"--config=TopKBatches.folder = '{topk}'",
       "--config=TopKBatches.shuffle = True", f"--config=TopKBatches.seed = {seed}",
       "--config=TopKBatches.repeat = True", "--config=TrainTask.teacher = None",
       "--config=TrainTask.teacher_checkpoint = None", "--config=DistillationLoss.top_k = True",
       f"--config=DistillationLoss.alpha = {alpha}", f"--config=Trainer.seed = {seed}",
       f"--output_dir={out}"], log)
  return out


def synthetic_corpus(args, work: Path, log: Path) -> Path:
  output = work / "synthetic.jsonl"
  command = ["combinax-decode", f"--pretrained={NAME}", "--template={prompt}", f"--samples={args.samples}",
             f"--output={output}", "--temperature=0.8", "--top_k=0", "--top_p=0.95",
             f"--max_length={args.sample_length}", "--batch_size=32", "--seed=0"]
  seconds = run(command + [f"--prompt={p}" for p in OPENINGS], log)
  return output, seconds


def seconds_per_step(run_dir: Path) -> float:
  rates = [r["steps_per_sec"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
           if "steps_per_sec" in r]
  return 1 / statistics.median(rates[1:] or rates)   # the first interval holds the compilation


def measure(args, work: Path, runs: dict[str, list[Path]]) -> dict:
  """Held-out cross-entropy of every run and the teacher; decoding speed of a student, the teacher, speculative."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from combinax import data, decoding, pretrained, speculative
  from combinax.layers import WeightedCategoryCrossEntropy
  from combinax.pretrained import llama
  from combinax.store import checkpoints

  tokenizer = pretrained.tokenizer(NAME)
  stream = data.lm_pipeline(corpus="kjv", split="test", tokenizer=tokenizer, length=args.length, batch_size=8,
                            repeat=False)()
  batches = [next(stream) for _ in range(args.eval_batches)]
  loss = WeightedCategoryCrossEntropy()

  def held_out(model, params) -> float:
    step = jax.jit(lambda p, tokens: model.apply(p, {}, tokens)[0])
    total = weight = 0.0
    for tokens, targets, weights in batches:
      value, _ = loss.apply({}, {}, (step(params, tokens), targets, weights))
      total += float(value) * float(np.sum(weights))
      weight += float(np.sum(weights))
    return total / weight

  def student_params(run_dir: Path, mode="eval", **options):
    model = pretrained.model(NAME, n_layers=4, mode=mode, **options)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))[0])
    return model, checkpoints.restore(checkpoints.latest(run_dir), template, prefix="params")[0]

  def teacher_params(run_dir: Path | None):
    if run_dir is None:
      return pretrained.load(NAME, mode="eval")[1]
    model = pretrained.model(NAME, mode="eval")
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))[0])
    return checkpoints.restore(checkpoints.latest(run_dir), template, prefix="params")[0]

  teachers = {"SmolLM2 as shipped": teacher_params(None), "SmolLM2 tuned on KJV": teacher_params(work / "teacher-kjv")}
  teacher = pretrained.model(NAME, mode="eval")
  results = {"cross_entropy": {f"teacher: {name}": [held_out(teacher, p)] for name, p in teachers.items()}}
  initial = checkpoints.checkpoint_or_latest(student_init_checkpoint())
  model, _ = student_params(runs["hard labels"][0])
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))[0])
  results["cross_entropy"]["student at its initialisation"] = [
      held_out(model, checkpoints.restore(initial, template, prefix="params")[0])]
  for kind, dirs in runs.items():
    results["cross_entropy"][kind] = [held_out(*student_params(d)) for d in dirs]
  print(json.dumps(results["cross_entropy"], indent=1), flush=True)

  # Decoding speed, batch 1, greedy: interleaved rounds, best and median tokens/s. Each teacher also decodes with
  # the first student distilled from it as its speculative draft (the same text as its greedy decoding).
  prompt = np.asarray(batches[0][0][:1, :16], np.int32)
  new, max_len = 128, 16 + 128 + max(args.draft_k) + 1
  start = llama.start_id(pretrained.config(NAME))
  target = pretrained.model(NAME, mode="predict", max_len=max_len)
  greedy = lambda model, params: lambda: decoding.autoregressive_sample(model, params, prompt, max_length=new,
                                                                        temperature=0.0, start_id=start)
  draft = pretrained.model(NAME, n_layers=4, mode="predict", max_len=max_len)
  drafts = {"SmolLM2 as shipped": student_params(runs["distilled, SmolLM2 as shipped"][0])[1],
            "SmolLM2 tuned on KJV": student_params(runs["distilled, tuned teacher"][0])[1]}
  engines = {"student (4 blocks)": greedy(draft, drafts["SmolLM2 tuned on KJV"])}
  stats = {}
  for name, params in teachers.items():
    engines[f"{name} (30 blocks)"] = greedy(target, params)
    for k in args.draft_k:
      def speculate(key=f"{name} + its distilled draft, k={k}", params=params, k=k, name=name):
        tokens, stats[key] = speculative.speculative_sample(target, params, draft, drafts[name], prompt,
                                                            max_length=new, k=k, temperature=0.0, start_id=start)
        return tokens
      engines[f"{name} + its distilled draft, k={k}"] = speculate
  outputs = {name: np.asarray(jax.block_until_ready(f())) for name, f in engines.items()}   # compiles
  rates = {name: [] for name in engines}
  for _ in range(args.rounds):
    for name, f in engines.items():
      begin = time.perf_counter()
      jax.block_until_ready(f())
      rates[name].append(new / (time.perf_counter() - begin))
  plain = lambda name: outputs[f"{name.split(' + ')[0].split(' (')[0]} (30 blocks)"]
  results["decoding"] = {
      name: {"tokens_per_s_best": max(r), "tokens_per_s_median": statistics.median(r),
             **({"equal_to_greedy": bool(np.array_equal(outputs[name], plain(name))),
                 "acceptance_rate": stats[name].acceptance_rate} if name in stats else {})}
      for name, r in rates.items()}
  print(json.dumps(results["decoding"], indent=1), flush=True)
  results["student_agreement_with_tuned_teacher_greedy"] = float(
      np.mean(outputs["student (4 blocks)"] == outputs["SmolLM2 tuned on KJV (30 blocks)"]))
  return results


def student_init_checkpoint() -> str:
  """The cut the recipes start every student from (gin-configured as in configs/student_smollm2_kjv.gin)."""
  import gin

  from combinax.cli.frame import parse_config
  gin.clear_config()
  parse_config([str(ROOT / "configs/student_smollm2_kjv.gin")], [])
  from combinax import distill
  path = distill.student_checkpoint()
  gin.clear_config()
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=Path, default=ROOT / "runs/distill_smollm2")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=300, help="steps of every run (and top-k batches stored)")
  parser.add_argument("--length", type=int, default=64, help="tokens per sequence (the recipes say 128)")
  parser.add_argument("--samples", type=int, default=400, help="synthetic samples (seen twice in --steps)")
  parser.add_argument("--sample-length", type=int, default=96, help="tokens per synthetic sample")
  parser.add_argument("--eval-batches", type=int, default=40, help="held-out batches of 8 sequences")
  parser.add_argument("--draft-k", type=int, nargs="+", default=[2, 4])
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  work = args.workdir.resolve()
  work.mkdir(parents=True, exist_ok=True)
  log = work / "log.txt"
  timings = json.loads((work / "timings.json").read_text()) if (work / "timings.json").exists() else {}

  def timed(key, action):
    if key not in timings:
      timings[key] = action()
      (work / "timings.json").write_text(json.dumps(timings, indent=1))

  topk = [sys.executable, "-m", "combinax.distill", "topk", "--config_file=configs/distill_smollm2_kjv.gin",
          *shape_bindings(args)]
  timed("teacher top-k, s", lambda: run(topk + [f"--output_dir={work / 'topk'}"], log))
  tuned = work / "teacher-kjv"
  timed("teacher fine-tuning, s", lambda: run(
      ["combinax-train", "--config_file=configs/teacher_smollm2_kjv.gin", *shape_bindings(args, topk=False),
       f"--output_dir={tuned}"], log))
  timed("tuned teacher top-k, s", lambda: run(
      topk + [f"--config=TEACHER_CHECKPOINT = '{tuned}'", f"--output_dir={work / 'topk-tuned'}"], log))
  runs = {"hard labels": [], "distilled, tuned teacher": [],
          "distilled, SmolLM2 as shipped": [train_on_topk(args, work, "distilled", args.seeds[0], 0.5, log)]}
  for seed in args.seeds:
    runs["hard labels"].append(train_on_topk(args, work, "hard", seed, 0.0, log))
    runs["distilled, tuned teacher"].append(
        train_on_topk(args, work, "distilled-tuned", seed, 0.5, log, topk="topk-tuned"))
  corpus = work / "synthetic.jsonl"
  timed("synthetic corpus, s", lambda: synthetic_corpus(args, work, log)[1])
  synthetic = work / "synthetic-seed0"
  run(["combinax-train", "--config_file=configs/student_smollm2_kjv.gin", *shape_bindings(args, topk=False),
       f"--config=train/lm_pipeline.path = '{corpus}'", "--config=train/lm_pipeline.text_key = 'sample'",
       f"--output_dir={synthetic}"], log)
  runs["synthetic text only"] = [synthetic]
  results = measure(args, work, runs)
  results["seconds_per_step"] = {kind: [seconds_per_step(d) for d in dirs] for kind, dirs in runs.items()}
  results["timings"] = timings
  results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
  results["synthetic_sample"] = json.loads(corpus.read_text().splitlines()[0])
  (work / "results.json").write_text(json.dumps(results, indent=1))
  report(results)


def report(results: dict):
  ce = results["cross_entropy"]
  hard = statistics.mean(ce["hard labels"])
  print("\n| model | held-out KJV CE (per seed) | mean | / hard labels | s/step |")
  print("|---|---|---|---|---|")
  for kind, values in ce.items():
    step = results["seconds_per_step"].get(kind)
    print(f"| {kind} | {', '.join(f'{v:.4f}' for v in values)} | {statistics.mean(values):.4f} | "
          f"{statistics.mean(values) / hard:.3f} | {'' if step is None else f'{statistics.mean(step):.2f}'} |")
  print("\n| decoding, batch 1, greedy, 128 new | tokens/s best | median | same text as greedy | acceptance |")
  print("|---|---|---|---|---|")
  for name, d in results["decoding"].items():
    print(f"| {name} | {d['tokens_per_s_best']:.1f} | {d['tokens_per_s_median']:.1f} | "
          f"{d.get('equal_to_greedy', '')} | {d.get('acceptance_rate', '')} |")
  print("\nthe student's greedy tokens equal to the tuned teacher's: "
        f"{results['student_agreement_with_tuned_teacher_greedy']:.3f}")
  print(f"one-time costs: {results['timings']}")
  print(f"a synthetic sample: {results['synthetic_sample']['text']!r}")


if __name__ == "__main__":
  main()
