"""Runs the shipped recipes in this checkout and in another (e.g. the commit before a refactor) and checks that
they train, evaluate and decode bit for bit alike: every array of the final checkpoint (params, model state,
optimizer state, step, rng), every logged loss and metric, and the greedy text of the language models.

    git worktree add /tmp/before HEAD~8
    python experiments/same_as_before.py --before /tmp/before [--recipes digits_cnn,lstm_lm_kjv] [--steps 20]

Each recipe runs at its own sizes for `--steps` updates (the growth recipes: that many per phase; the federated one:
that many rounds), evaluating and saving at the last, from a fresh run directory per checkout, through each
checkout's own `combinax-train` / `combinax-federated` / `combinax-decode` (the command modules of its layout).
`pipeline_lm_kjv` runs on 8 simulated CPU devices (its 4 stages need 4), the others on one. The recipes that start from SmolLM2 use the tests' 2-block cuts of it (the teacher's 30 blocks
would take ~40 minutes per checkout); `qat_lm_kjv` starts from the `transformer_lm_kjv` run it made first.
Prints one line per recipe and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
# The command modules of the layout with combinax/cli/, and of the one before it. Chosen by what the checkout holds:
# trying one and falling back would find this checkout's modules through its editable install.
ENTRY = {"train": ("from combinax.cli.train import COMMAND; COMMAND.main()",
                   "from combinax.train.cli import train; train()"),
         "decode": ("from combinax.cli.decode import main; main()", "from combinax.train.cli import decode; decode()"),
         "federated": ("from combinax.cli.federated import main; main()",
                       "from combinax.federated.cli import main; main()")}
SMOLLM2_STUDENT = ["train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8", "eval/lm_pipeline.length = 16",
                   "eval/lm_pipeline.batch_size = 8", "distill.student_checkpoint.layers = [0, 29]",
                   "student/pretrained.model.n_layers = 2"]
SMOLLM2_TEACHER = ["teacher/pretrained.model.n_layers = 2", "TEACHER_CHECKPOINT = @distill.student_checkpoint()"]


def steps_bindings(steps: int, scopes=("",)) -> list[str]:
  return [f"{scope}{b}" for scope in scopes for b in (f"Trainer.steps = {steps}", f"Trainer.checkpoint_every = {steps}",
                                                       f"Trainer.log_every = {max(1, steps // 4)}",
                                                       f"EvalTask.eval_every = {steps}", "EvalTask.n_batches = 2")]


def recipes(steps: int) -> dict[str, tuple[str, list[str], str]]:
  """recipe -> (command, bindings, the folder of its final run)."""
  plain = steps_bindings(steps)
  grow = steps_bindings(steps, ("small/", "large/")) + [f"GrowthRun.steps = {steps}", f"GrowthRun.log_every = {steps}"]
  return {
      "digits_cnn": ("train", plain, ""),
      "transformer_lm_kjv": ("train", plain, ""),
      "lstm_lm_kjv": ("train", plain, ""),
      "pipeline_lm_kjv": ("train", plain, ""),
      "sentiment_imdb": ("train", plain, ""),
      "translation_en_es": ("train", plain, ""),
      "qat_lm_kjv": ("train", plain, ""),   # init_checkpoint: transformer_lm_kjv's run (made first)
      "grow_lm_kjv": ("train", grow, "large"),
      "grow_lm_kjv_scratch": ("train", grow, ""),
      "fedavg_digits": ("federated", [f"FederatedRun.rounds = {steps}", f"FederatedRun.eval_every = {steps}",
                                      f"FederatedRun.checkpoint_every = {steps}"], ""),
      "finetune_minilm_sentiment": ("train", plain + ["LENGTH = 32"], ""),
      "student_smollm2_kjv": ("train", plain + SMOLLM2_STUDENT, ""),
      "teacher_smollm2_kjv": ("train", plain + SMOLLM2_STUDENT[:4] + [
          "teacher/pretrained.model.n_layers = 2", "Trainer.init_checkpoint = @distill.student_checkpoint()",
          "distill.student_checkpoint.layers = [0, 29]"], ""),
      "distill_smollm2_kjv": ("train", plain + SMOLLM2_STUDENT + SMOLLM2_TEACHER, ""),
  }


def command(checkout: Path, entry: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
  code = ENTRY[entry][0 if (checkout / "combinax" / "cli").is_dir() else 1]
  return subprocess.run([sys.executable, "-c", code, *args], cwd=checkout, capture_output=True, text=True,
                        env={**env, "PYTHONPATH": str(checkout)}, timeout=3600)


def final_arrays(folder: Path) -> dict[str, np.ndarray]:
  from combinax.store import checkpoints   # this checkout's reader reads both (the format did not change)
  return checkpoints.read_arrays(checkpoints.latest(folder))


def logged(folder: Path) -> list[dict]:
  path = folder / "metrics.jsonl"
  return [{k: v for k, v in json.loads(line).items() if k != "steps_per_sec"}
          for line in path.read_text().splitlines()] if path.exists() else []


def run_recipe(checkout: Path, name: str, spec, work: Path, env: dict) -> dict:
  entry, bindings, final = spec
  output = work / name
  if name == "pipeline_lm_kjv":   # its 4 stages need 4 devices: 8 simulated CPU devices, as in the tests
    env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  if name == "qat_lm_kjv":
    bindings = bindings + [f"Trainer.init_checkpoint = '{work / 'transformer_lm_kjv'}'"]
  done = command(checkout, entry, [f"--config_file=configs/{name}.gin", f"--output_dir={output}",
                                   *[f"--config={b}" for b in bindings]], env)
  if done.returncode:
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
  result = {"arrays": final_arrays(output / final), "logged": logged(output / final)}
  if name in ("transformer_lm_kjv", "lstm_lm_kjv", "pipeline_lm_kjv", "qat_lm_kjv", "grow_lm_kjv"):
    text = command(checkout, "decode", [f"--output_dir={output / final}", "--prompt=And God said", "--max_length=12",
                                        "--temperature=0"], env)
    result["decoded"] = text.stdout if text.returncode == 0 else f"error: {text.stderr.strip()[-300:]}"
  return result


def differences(after: dict, before: dict) -> list[str]:
  if "error" in after or "error" in before:
    return [f"after: {after.get('error', 'ran')}; before: {before.get('error', 'ran')}"]
  found = []
  if set(after["arrays"]) != set(before["arrays"]):
    found.append(f"other arrays: {sorted(set(after['arrays']) ^ set(before['arrays']))[:4]}")
  for path in sorted(set(after["arrays"]) & set(before["arrays"])):
    a, b = after["arrays"][path], before["arrays"][path]
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
      found.append(f"{path} differs")
  if after["logged"] != before["logged"]:
    found.append("metrics.jsonl differs")
  if after.get("decoded") != before.get("decoded"):
    found.append(f"decoded text differs: {after.get('decoded')!r} vs {before.get('decoded')!r}")
  return found


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--before", required=True, help="the other checkout (e.g. a git worktree of an older commit)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--recipes", default=None, help="comma-separated (default: all shipped ones)")
  args = parser.parse_args()
  todo = recipes(args.steps)
  names = args.recipes.split(",") if args.recipes else list(todo)
  if "qat_lm_kjv" in names and "transformer_lm_kjv" not in names:
    names.insert(names.index("qat_lm_kjv"), "transformer_lm_kjv")
  failed = 0
  with tempfile.TemporaryDirectory() as tmp:
    base_env = {**os.environ, "COMBINAX_HUGE_PAGES": "0", "JAX_PLATFORMS": "cpu"}
    envs = {side: {**base_env, "COMBINAX_CACHE": str(Path(tmp) / side / "cache")} for side in ("after", "before")}
    for name in names:
      results = {side: run_recipe(checkout, name, todo[name], Path(tmp) / side, envs[side])
                 for side, checkout in (("after", HERE), ("before", Path(args.before).resolve()))}
      found = differences(results["after"], results["before"])
      arrays = len(results["after"].get("arrays", {}))
      print(f"{name:28s} {'bit-identical' if not found else 'DIFFERS'} ({arrays} arrays, "
            f"{len(results['after'].get('logged', []))} log records"
            f"{', decoded text' if 'decoded' in results['after'] else ''})" + "".join(f"\n    {f}" for f in found[:6]),
            flush=True)
      failed += bool(found)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
