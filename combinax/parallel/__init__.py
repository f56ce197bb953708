"""combinax.parallel: running one model over many devices beyond data parallelism. `Pipeline` is GPipe: a stack of
identical blocks as stages over micro-batches (see pipeline.py)."""

from combinax.parallel.pipeline import Pipeline, gpipe, schedule
