"""combinax.cli: the commands, the top floor. Each module is one command and declares only its own flags; `frame`
is what they share (config files and bindings, `--output_dir`, `--multihost`, `--traceback`, one-line errors and
exit codes). Nothing in combinax imports this floor, except the `__main__` entry points of `python -m` commands.

    combinax-train       cli/train.py       the Trainer, or the job a recipe names (growth)
    combinax-decode      cli/decode.py      text from a run's LM or a bundled one (quantized, speculative, streamed)
    combinax-federated   cli/federated.py   a federated run
    python -m combinax.pretrained          cli/pretrained.py   list, download, info, run
    python -m combinax.distill topk        cli/distill.py      a teacher's stored top-k logits
    python -m combinax.federated.flower    cli/flower.py       a federated recipe over Flower
"""
