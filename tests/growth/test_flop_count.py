"""benchmarks/flops.py counts every block of a stack: its XLA count of a training step agrees with a hand count of
the matmuls for 1 and 8 layers, the 8-layer step costs 8 blocks (XLA counts a scanned stack once), and the operator
phase's step costs more than the large model's own."""

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "benchmark_flops", Path(__file__).resolve().parents[2] / "benchmarks" / "flops.py")
flops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(flops)

# Small enough to compile in seconds; dropout and remat off, so that the step is the matmuls the hand count counts
# plus elementwise work (norms, rotary, softmax, the loss): measured, 3% more than the hand count for 1 layer, 8% for
# 8 layers, 9% a block.
TINY = dict(vocab_size=512, d_model=64, d_ff=256, n_heads=2, positions="rotary", max_len=32, tie_embeddings=True,
            dropout=0.0, remat=False)
SIZE = dict(batch=4, length=32)


def counted(n_layers, **options):
  return flops.step_flops(flops.lm(**TINY, n_layers=n_layers, **options), **SIZE)


@pytest.mark.parametrize("n_layers", [1, 8])
def test_the_step_count_is_the_hand_count_of_its_matmuls(n_layers):
  hand = flops.hand_count(**TINY, n_layers=n_layers, **SIZE)["total"]
  assert hand <= counted(n_layers) <= 1.15 * hand


def test_an_8_layer_step_counts_8_blocks_not_one():
  one, eight = counted(1), counted(8)
  per_layer = flops.hand_count(**TINY, n_layers=1, **SIZE)["layer"]
  # The 7 extra blocks: 7x a block's matmuls (plus their elementwise work), where a scan would have counted 0.
  assert 7 * per_layer <= eight - one <= 7 * 1.2 * per_layer


def test_a_scanned_stack_is_refused_by_name():
  from combinax.models import TransformerLM
  with pytest.raises(ValueError, match="scan_layers=False"):
    flops.step_flops(TransformerLM(**TINY, n_layers=2), **SIZE)


def test_the_operator_step_costs_the_large_step_and_the_operator():
  small = flops.lm(**dict(TINY, d_model=32, d_ff=128, n_heads=1), n_layers=2)
  large = flops.lm(**TINY, n_layers=4)
  large_step = flops.step_flops(large, **SIZE)
  assert large_step < flops.operator_step_flops(small, large, **SIZE) < 2 * large_step
