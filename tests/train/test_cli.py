"""`combinax-train` runs every recipe in configs/ for a few steps (tiny sizes via --config), `combinax-decode`
samples from the LM, and bad configuration gives gin's message and exit code 2, not a traceback."""

from pathlib import Path

import gin
import pytest

from combinax.cli import decode, train
from combinax.pretrained import registry
from combinax.store import checkpoints
from combinax.store.logging import read_metrics

# Recipes of other commands, tested where those are.
OTHER_COMMANDS = {"fedavg_digits": "combinax-federated: tests/federated/test_run.py"}
# Recipes whose combinax-train run is tested, tiny, by a file of their own (which reads more of it than this does).
ELSEWHERE = {"grow_lm_kjv": "tests/growth/test_growth_run.py", "digits_cnn": "tests/store/test_session.py"}
ALL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.gin"))
CONFIGS = [c for c in ALL_CONFIGS if c.stem not in OTHER_COMMANDS]   # combinax-train's
COMMON = ["Trainer.steps = 3", "Trainer.log_every = 1", "Trainer.checkpoint_every = 3", "EvalTask.n_batches = 1",
          "EvalTask.eval_every = 3", "corpus_tokenizer.kind = 'char'"]
# The growth recipes bind per phase (scopes small/ and large/), so their tiny settings are scoped too.
GROW = [f"{scope}/{binding}" for scope in ("small", "large") for binding in (
    "Trainer.steps = 3", "Trainer.log_every = 1", "Trainer.checkpoint_every = 3", "EvalTask.eval_every = 3",
    "TransformerLM.d_ff = 32")] + [
    "small/TransformerLM.d_model = 16", "small/TransformerLM.n_heads = 2", "small/TransformerLM.n_layers = 1",
    "large/TransformerLM.d_model = 32", "large/TransformerLM.n_heads = 4", "large/TransformerLM.n_layers = 2",
    "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8", "eval/lm_pipeline.length = 16",
    "eval/lm_pipeline.batch_size = 8", "VOCAB = 256", "GrowthRun.steps = 2", "GrowthRun.log_every = 1"]
# The students cut to 2 of SmolLM2's blocks, and the teacher too: it is the same code with a 2-block teacher (its
# 30 blocks made the distillation recipe's test take 64 s).
SMOLLM2_STUDENT = ["train/lm_pipeline.length = 16", "eval/lm_pipeline.length = 16", "EvalTask.n_batches = 1",
                   "student/pretrained.model.n_layers = 2", "distill.student_checkpoint.layers = [0, 29]"]
SMOLLM2_TEACHER = ["teacher/pretrained.model.n_layers = 2",
                   "TrainTask.teacher_checkpoint = @distill.student_checkpoint()"]
# An image- or audio-prefix LM on SmolLM2 cut to 2 of its blocks, from the bundled weights.
SMOLLM2_CUT = ["pretrained.image_prefix_model.n_layers = 2", "Trainer.init_checkpoint = @distill.student_checkpoint()",
               "distill.student_checkpoint.teacher_checkpoint = @pretrained.checkpoint()",
               "distill.student_checkpoint.layers = [0, 29]"]
TINY_VIT_PREFIX = ["image/ViT.d_model = 16", "image/ViT.d_ff = 32", "image/ViT.n_layers = 1", "image/ViT.n_heads = 2",
                   "train/image_prompt_pipeline.size = 32", "train/image_prompt_pipeline.batch_size = 8",
                   "eval/image_prompt_pipeline.size = 16", "eval/image_prompt_pipeline.batch_size = 8",
                   "EvalTask.n_batches = 1"]
TINY = {
    "siglip_rendered": ["image/ViT.d_model = 16", "image/ViT.d_ff = 32", "image/ViT.n_layers = 1",
                        "image/ViT.n_heads = 2", "text/TransformerEncoder.d_model = 16",
                        "text/TransformerEncoder.d_ff = 32", "text/TransformerEncoder.n_layers = 1",
                        "text/TransformerEncoder.n_heads = 2", "DualEncoder.d_embed = 8",
                        "train/image_text_pipeline.size = 64", "train/image_text_pipeline.batch_size = 16",
                        "eval/image_text_pipeline.size = 32", "eval/image_text_pipeline.batch_size = 16",
                        "EvalTask.n_batches = 1"],
    # The bundled PP-OCR recogniser as the image tower (frozen, from its own checkpoint), 48 x 64 lines.
    "siglip_ppocr": ["WIDTH = 64", "text/TransformerEncoder.d_model = 16", "text/TransformerEncoder.d_ff = 32",
                     "text/TransformerEncoder.n_layers = 1", "text/TransformerEncoder.n_heads = 2",
                     "DualEncoder.d_embed = 8", "train/image_text_pipeline.size = 64",
                     "train/image_text_pipeline.batch_size = 16", "eval/image_text_pipeline.size = 32",
                     "eval/image_text_pipeline.batch_size = 16", "EvalTask.n_batches = 1"],
    "kws_spoken": ["AudioEncoder.d_model = 16", "AudioEncoder.d_ff = 32", "AudioEncoder.n_layers = 1",
                   "AudioEncoder.n_heads = 2", "train/spoken_pipeline.size = 32",
                   "train/spoken_pipeline.batch_size = 8",
                   "eval/spoken_pipeline.size = 16", "eval/spoken_pipeline.batch_size = 8", "EvalTask.n_batches = 1"],
    "vit_glyphs": ["ViT.d_model = 16", "ViT.d_ff = 32", "ViT.n_layers = 1", "ViT.n_heads = 2",
                   "train/glyph_pipeline.size = 32", "train/glyph_pipeline.batch_size = 16",
                   "eval/glyph_pipeline.size = 16", "eval/glyph_pipeline.batch_size = 16"],
    "vit_digits": ["ViT.d_model = 16", "ViT.d_ff = 32", "ViT.n_layers = 1", "ViT.n_heads = 2",
                   "train/image_pipeline.batch_size = 16", "eval/image_pipeline.batch_size = 16"],
    "transformer_lm_kjv": ["TransformerLM.d_model = 16", "TransformerLM.d_ff = 32", "TransformerLM.n_layers = 1",
                           "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8",
                           "eval/lm_pipeline.length = 16", "eval/lm_pipeline.batch_size = 8", "VOCAB = 256"],
    "pipeline_lm_kjv": ["TransformerLM.d_model = 16", "TransformerLM.d_ff = 32", "TransformerLM.n_layers = 4",
                        "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8",
                        "eval/lm_pipeline.length = 16", "eval/lm_pipeline.batch_size = 8", "VOCAB = 256"],
    "lstm_lm_kjv": ["RNNLM.d_model = 16", "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8",
                    "eval/lm_pipeline.length = 16", "eval/lm_pipeline.batch_size = 8", "VOCAB = 256"],
    "sentiment_imdb": ["TransformerEncoder.d_model = 16", "TransformerEncoder.d_ff = 32",
                       "TransformerEncoder.n_layers = 1", "train/classification_pipeline.max_length = 16",
                       "train/classification_pipeline.batch_size = 8", "eval/classification_pipeline.max_length = 16",
                       "eval/classification_pipeline.batch_size = 8", "VOCAB = 512"],
    "finetune_minilm_sentiment": ["LENGTH = 16", "train/classification_pipeline.batch_size = 8",
                                  "eval/classification_pipeline.batch_size = 8"],
    "translation_en_es": ["Transformer.d_model = 16", "Transformer.d_ff = 32", "Transformer.n_encoder_layers = 1",
                          "Transformer.n_decoder_layers = 1", "train/translation_pipeline.max_length = 16",
                          "train/translation_pipeline.boundaries = (8, 16)",
                          "train/translation_pipeline.batch_sizes = (8, 8)",
                          "eval/translation_pipeline.max_length = 16", "eval/translation_pipeline.boundaries = (8, 16)",
                          "eval/translation_pipeline.batch_sizes = (8, 8)", "VOCAB = 512"],
    # From scratch here: the recipe's init_checkpoint is the float recipe's run, which this test has not made.
    "qat_lm_kjv": ["TransformerLM.d_model = 32", "TransformerLM.d_ff = 64", "TransformerLM.n_layers = 1",
                   "train/lm_pipeline.length = 16", "train/lm_pipeline.batch_size = 8",
                   "eval/lm_pipeline.length = 16", "eval/lm_pipeline.batch_size = 8", "VOCAB = 256",
                   "Trainer.init_checkpoint = None"],
    "student_smollm2_kjv": SMOLLM2_STUDENT,
    "distill_smollm2_kjv": SMOLLM2_STUDENT + SMOLLM2_TEACHER,
    # The teacher fine-tuned, as a 2-block cut of SmolLM2.
    "teacher_smollm2_kjv": SMOLLM2_STUDENT[:3] + ["teacher/pretrained.model.n_layers = 2",
                                                  "Trainer.init_checkpoint = @distill.student_checkpoint()",
                                                  "distill.student_checkpoint.layers = [0, 29]"],
    "grow_lm_kjv_scratch": GROW,
    # 20 people (a knowledge base of 168 biographies, built with the bundled MiniLM; 12 held out), 2 blocks.
    # 20 people's biographies (MiniLM), SmolLM2 cut to 2 of its blocks as for the teacher.
    "rag_smollm2": ["facts_knowledge_base.people = 20", "facts_questions.people = 20", "rag_pipeline.k = 1",
                    "rag_pipeline.length = 128",
                    "pretrained.model.n_layers = 2", "Trainer.init_checkpoint = @distill.student_checkpoint()",
                    "distill.student_checkpoint.teacher_checkpoint = @pretrained.checkpoint()",
                    "distill.student_checkpoint.layers = [0, 29]"],
    # SmolLM2 cut to 2 of its blocks (as for the teacher) under a 1-block ViT.
    "vlm_smollm2_rendered": SMOLLM2_CUT + TINY_VIT_PREFIX,
    # SmolLM2 cut to 2 blocks under the bundled PP-OCR recogniser (image/ from its own checkpoint), 48 x 64 lines.
    "vlm_smollm2_ppocr": [
        "pretrained.image_prefix_model.n_layers = 2", "distill.student_checkpoint.layers = [0, 29]",
        "distill.student_checkpoint.teacher_checkpoint = @lm/pretrained.checkpoint()",
        "Trainer.init_checkpoint = {'': @distill.student_checkpoint(), 'image': @vision/pretrained.checkpoint()}",
        "WIDTH = 64"] + TINY_VIT_PREFIX[4:],
    # The second stage: LoRA on the 2 blocks, from the bundled weights (the test has no first stage's run).
    "vlm_smollm2_rendered_lora": SMOLLM2_CUT + TINY_VIT_PREFIX,
    # The same with sound: SmolLM2 cut to 2 blocks under a 1-block AudioEncoder, 60 frames (30 tokens).
    "alm_smollm2_spoken": SMOLLM2_CUT + [
        "audio/AudioEncoder.d_model = 16", "audio/AudioEncoder.d_ff = 32", "audio/AudioEncoder.n_layers = 1",
        "audio/AudioEncoder.n_heads = 2", "FRAMES = 60", "train/spoken_prompt_pipeline.size = 16",
        "train/spoken_prompt_pipeline.batch_size = 8", "eval/spoken_prompt_pipeline.size = 8",
        "eval/spoken_prompt_pipeline.batch_size = 8", "EvalTask.n_batches = 1"],
    "retro_facts": ["facts_knowledge_base.people = 20", "facts_corpus.people = 20", "TransformerLM.d_model = 16",
                    "TransformerLM.d_ff = 32", "TransformerLM.n_layers = 2", "TransformerLM.n_heads = 2",
                    "RetroOptions.every = 1", "retro_pipeline.batch_size = 8"],
}


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
  monkeypatch.setenv("COMBINAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.chdir(CONFIGS[0].parents[1])   # recipes include each other relative to the project root
  gin.clear_config()
  yield
  gin.clear_config()


def run(command, *args):
  command.COMMAND.run(list(args))


def test_every_recipe_has_tiny_settings():
  assert {c.stem for c in ALL_CONFIGS} == set(TINY) | set(OTHER_COMMANDS) | set(ELSEWHERE)


PRETRAINED = {"finetune_minilm_sentiment": "all-minilm-l6-v2",  # recipes that start from bundled weights
              "student_smollm2_kjv": "smollm2-135m-instruct", "distill_smollm2_kjv": "smollm2-135m-instruct",
              "teacher_smollm2_kjv": "smollm2-135m-instruct", "retro_facts": "all-minilm-l6-v2",
              "rag_smollm2": "smollm2-135m-instruct", "vlm_smollm2_rendered": "smollm2-135m-instruct",
              "alm_smollm2_spoken": "smollm2-135m-instruct", "vlm_smollm2_rendered_lora": "smollm2-135m-instruct",
              "vlm_smollm2_ppocr": "smollm2-135m-instruct ppocr-v4-rec", "siglip_ppocr": "ppocr-v4-rec"}


# The recipes that start from bundled weights run in a process of their own on one device (tests/conftest.py): on 8
# devices in the worker, importing and replicating SmolLM2 peaked at 14.2 GB (the distillation, student and teacher
# recipes alike, whichever came first) and left the worker 2.6 GB bigger; fine-tuning MiniLM, 9.7 GB. Alone on one
# device: 1.1-2.4 GB.
ISOLATED = {"distill_smollm2_kjv", "student_smollm2_kjv", "teacher_smollm2_kjv", "finetune_minilm_sentiment",
            "rag_smollm2", "vlm_smollm2_rendered", "alm_smollm2_spoken", "vlm_smollm2_rendered_lora",
            "vlm_smollm2_ppocr", "siglip_ppocr"}


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.isolated(devices=1)) if c.stem in ISOLATED
                                    else c for c in CONFIGS if c.stem not in ELSEWHERE], ids=lambda c: c.stem)
def test_recipe_trains_a_few_steps(config, tmp_path, shared_pretrained_cache, monkeypatch):
  for name in PRETRAINED.get(config.stem, "").split():
    if registry.source_files(name) is None:
      pytest.skip(f"weights of {name} not installed (python -m combinax.pretrained download {name})")
  if config.stem in PRETRAINED:
    monkeypatch.setenv("COMBINAX_CACHE", shared_pretrained_cache)   # (imported once for all these recipes)
  output = tmp_path / "run"
  bindings = [f"--config={b}" for b in COMMON + TINY[config.stem]]
  run(train, f"--config_file={config}", f"--output_dir={output}", *bindings)
  assert (output / "config.gin").exists() and (output / "operative_config.gin").exists()
  assert checkpoints.latest(output).name == "step_00000003"
  records = read_metrics(output)
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
  assert any("eval/loss" in r for r in records)


# A KV cache of max_len; RNN carries; a pipelined run's checkpoint decoded by the plain model.
@pytest.mark.parametrize("recipe", ["transformer_lm_kjv", "lstm_lm_kjv", "pipeline_lm_kjv"])
def test_decode_samples_from_the_trained_lm(recipe, tmp_path, capsys):
  config = next(c for c in CONFIGS if c.stem == recipe)
  output = tmp_path / "run"
  # A real (small) SentencePiece vocabulary, so the model's and the tokenizer's vocabularies agree.
  common = [b for b in COMMON if "corpus_tokenizer" not in b]
  bindings = [f"--config={b}" for b in common + TINY[config.stem]]
  run(train, f"--config_file={config}", f"--output_dir={output}", *bindings)
  capsys.readouterr()
  gin.clear_config()
  run(decode, f"--output_dir={output}", "--prompt=And God", "--prompt=In", "--max_length=5")
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith("And God") and lines[1].startswith("In")


@pytest.mark.parametrize("binding, message", [("Trainer.stepz = 3", "stepz"), ("Nope.x = 1", "Nope")])
def test_bad_configuration_is_a_clear_error(binding, message, tmp_path):
  config = CONFIGS[0]
  with pytest.raises(SystemExit) as info:
    run(train, f"--config_file={config}", f"--output_dir={tmp_path}", f"--config={binding}")
  assert "bad gin configuration" in str(info.value.code) and message in str(info.value.code)


def test_multihost_flags_without_multihost_are_a_clear_error(tmp_path):
  with pytest.raises(SystemExit) as info:
    run(train, f"--config_file={CONFIGS[0]}", f"--output_dir={tmp_path}", "--process_id=1",
        "--num_processes=2")
  assert str(info.value.code) == ("combinax-train: --num_processes, --process_id only mean something with "
                                  "--multihost")


def test_combinax_train_restarts_once_on_huge_pages_where_it_can():
  env = train.huge_pages_environment({"PATH": "/bin"}, "madvise")
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert train.huge_pages_environment(env, "madvise") is None                        # the restarted process
  assert train.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "always") == {
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert train.huge_pages_environment({}, "never") is None
  assert train.huge_pages_environment({"COMBINAX_HUGE_PAGES": "0"}, "always") is None


def _command(entry: str, *args, env=None):
  import os
  import subprocess
  import sys
  # Without JAX_PLATFORMS (conftest sets it), as users run it: JAX then looks for a TPU first.
  environ = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return subprocess.run([sys.executable, "-m", f"combinax.cli.{entry}", *args],
                        capture_output=True, text=True, timeout=300, env={**environ, **(env or {})})


def test_help_explains_each_command_and_the_huge_pages_restart():
  train_help = _command("train", "--help")
  assert train_help.returncode == 0 and "restarting" not in train_help.stderr
  assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in train_help.stdout and "COMBINAX_HUGE_PAGES=0" in train_help.stdout
  assert "--config_file" in train_help.stdout and "--output_dir" in train_help.stdout
  decode_help = _command("decode", "--help").stdout
  assert "combinax-decode: text from the language model" in decode_help
  for flag in ("--pretrained", "--quantize", "--draft", "--interactive", "--template"):
    assert flag in decode_help, flag


def test_the_console_shows_combinax_lines_only_and_the_restart_once(tmp_path):
  config = next(c for c in CONFIGS if c.stem == "digits_cnn")
  bindings = [f"--config={b}" for b in ["Trainer.steps = 1", "Trainer.log_every = 1", "EvalTask.n_batches = 1"]]
  done = _command("train", f"--config_file={config}", f"--output_dir={tmp_path}", *bindings,
                  env={"COMBINAX_CACHE": str(tmp_path / "cache"), "GLIBC_TUNABLES": ""})
  assert done.returncode == 0, done.stderr
  assert "Unable to initialize backend" not in done.stderr + done.stdout
  restarts = done.stderr.count("combinax-train: restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
  assert restarts == (1 if train.huge_pages_environment({}, train.thp_mode()) else 0), done.stderr
  lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
  assert all(line.startswith(("combinax-train:", "step ")) for line in lines), lines
