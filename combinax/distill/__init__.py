"""combinax.distill: small models that learn from large ones.

- `cl.DistillationLoss` (in combinax.layers) and `TrainTask(teacher=, teacher_checkpoint=)`: a teacher in the step.
- `take_layers` / `student_checkpoint`: a student that starts from every other layer of its teacher.
- `teacher_topk` (`python -m combinax.distill topk`) and `TopKBatches`: the teacher's top-k log-probabilities stored
  once beside the tokens and read back as batches for `cl.DistillationLoss(top_k=True)`, so a distillation run costs
  about a student's training.
- `combinax.distill.synthetic`: a corpus of samples from a model, with its provenance, read like any corpus.
"""

from combinax.distill.students import StudentError, student_checkpoint, take_layers
from combinax.distill.topk import TopKBatches, teacher_topk

__all__ = ["StudentError", "TopKBatches", "student_checkpoint", "take_layers", "teacher_topk"]
