"""combinax.store: what runs keep on disk, and how it is kept safe.

- `checkpoints`: any pytree on Orbax, each process writing its own shards, checked on every restore (`integrity`;
  `checkpoint_v1` reads combinax 0.1's npz checkpoints).
- `rundir`: a run directory's lock, files replaced whole (`write_atomically`, `replaced_atomically`), and how two
  configurations differ.
- `session`: `RunSession`, one long-running job's use of its run directory (lock, leftovers, resume-or-refuse,
  configuration record, save cadence, logs), shared by the Trainer, federated runs and growth.
- `logging`: progress, `metrics.jsonl`, TensorBoard files and the loss curve.

This floor imports nothing of combinax above `paths`, so every other floor may use it; importing the package
imports none of its modules (Orbax loads on the first save or restore).
"""
