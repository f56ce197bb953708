"""combinax.quant.kernels: the quantized matrix-vector product of `qdot.cc`, an XLA FFI handler for the CPU.

    >>> import numpy as np, jax.numpy as jnp
    >>> from combinax.quant import quantize_array, kernels
    >>> w = quantize_array(np.random.default_rng(0).normal(size=(64, 8)), "int8", group=32)
    >>> y = kernels.qdot(jnp.ones((1, 64)), w)            # == jnp.ones((1, 64)) @ w.dequantize(), as float32 sums
    >>> y.shape
    (1, 8)

`QuantizedArray.contract` calls it on the CPU, so every `Dense`, `Embedding`-tied head and decoding engine with
quantized weights uses it with nothing to choose: each weight byte is read once and widened in registers, where
XLA:CPU writes a float32 copy of each weight before its dot. Two arithmetics (qdot.cc says how each works):
`activations="float32"` (the default; the dequantized path's sums in another order) and `activations="int8"`
(llama.cpp's: x quantized in blocks of 32, exact integer dots).

Built on first use, not at `pip install`: the handler must be compiled against the XLA FFI headers of the jaxlib
that loads it (`jax.ffi.include_dir()`), which pip's isolated build environment does not hold. The system's C++
compiler (`$CXX`, else `c++`, `g++`, `clang++`) builds it once (~10 s) into `$COMBINAX_KERNELS_DIR`, else
`$COMBINAX_CACHE/kernels/` (named by a hash of the source, the jaxlib version and the compiler, written whole or not
at all); later processes load it from there.
Where no compiler works, every caller gets the same results from a pure-JAX path (`reference`), and a warning says
so once a process. `COMBINAX_KERNELS=0` in the environment chooses that path on purpose (to compare the two).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "combinax_qdot"
SOURCE = Path(__file__).with_name("qdot.cc")
ACTIVATIONS = ("float32", "int8")
BLOCK = 32   # the int8 arithmetic's activation block (Q8_0's), and the 4-bit kinds' only group the kernel takes
_KIND_CODES = {"int8": 0, "q4": 1, "q4_1": 2}
ISAS = ("portable", "avx2", "avx512-vnni")
MAX_ROWS = 16   # rows of x up to which `QuantizedArray.contract` uses the kernel (decoding); more go to XLA's dot

_lock = threading.Lock()
_state: dict = {}   # "library": the loaded ctypes library, or "problem": why there is none (found once a process)


def _compiler() -> str | None:
  named = os.environ.get("CXX")
  if named:
    return shutil.which(named)
  return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def _library_path(compiler: str) -> Path:
  from combinax.data.tokenizers import cache_root
  import jaxlib
  key = hashlib.sha256(SOURCE.read_bytes() + f"|{jaxlib.__version__}|{compiler}|{sys.platform}".encode())
  folder = Path(os.environ.get("COMBINAX_KERNELS_DIR") or cache_root() / "kernels")
  return folder / f"qdot-{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
  """Compiles qdot.cc into `target`, whole or not at all (a temporary file renamed into place)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
    built = Path(scratch) / target.name
    command = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
               str(SOURCE), "-o", str(built)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"`{' '.join(command)}` failed:\n{done.stderr[-2000:]}")
    os.replace(built, target)


def _load():
  """The registered library, or None (and the reason kept, and warned about once) where it cannot be built."""
  with _lock:
    if "library" in _state or "problem" in _state:
      return _state.get("library")
    if os.environ.get("COMBINAX_KERNELS", "1") == "0":
      _state["problem"] = "COMBINAX_KERNELS=0"
      return None
    try:
      compiler = _compiler()
      if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
      path = _library_path(compiler)
      if not path.exists():
        _build(compiler, path)
      library = ctypes.cdll.LoadLibrary(str(path))
      jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CombinaxQdot), platform="cpu")
      _state["library"] = library
      return library
    except Exception as e:   # noqa: BLE001  (any failure to build or load means the pure-JAX path)
      _state["problem"] = f"{type(e).__name__}: {e}"
      warnings.warn(f"combinax.quant.kernels: the quantized matmul kernel is not available ({_state['problem']}); "
                    "quantized weights compute through the pure-JAX path instead (the same results, slower on the "
                    "CPU)", stacklevel=3)
      return None


def available() -> bool:
  """Whether the kernel is built and registered (building it on the first call)."""
  return _load() is not None


def isa() -> str | None:
  """The vector version the kernel runs on this CPU ("portable", "avx2", "avx512-vnni"), None if unavailable."""
  library = _load()
  return None if library is None else ISAS[library.CombinaxQdotIsa()]


def supports(weight) -> str | None:
  """None if the kernel can contract this `QuantizedArray` (2-D, groups of 32 for the 4-bit kinds and a multiple
  of 32 for int8, scales float16 or float32), else why not."""
  group = weight.group
  if len(weight.shape) != 2:
    return f"a 2-D weight, got shape {weight.shape}"
  if group % BLOCK or (weight.kind != "int8" and group != BLOCK):
    return f"groups of {BLOCK} ({weight.kind}) or a multiple of {BLOCK} (int8), got {group}"
  if jnp.dtype(weight.scale.dtype) not in (jnp.float16, jnp.float32):
    return f"float16 or float32 scales, got {weight.scale.dtype}"
  return None


def qdot(x: jax.Array, weight, *, activations: str = "float32") -> jax.Array:
  """`x (rows, k) . W` for a 2-D `QuantizedArray` W grouped along the contracted axis, in its stored `(n, k)`
  layout (`values (n, groups, ...)`): `(rows, n)` float32. The kernel on the CPU where it is built, else
  `reference` (the same arithmetic). Reverse-mode gradients flow to `x` (through the float path); none to W."""
  if activations not in ACTIVATIONS:
    raise ValueError(f"quant.kernels.qdot: activations must be one of {ACTIVATIONS}, got {activations!r}")
  problem = supports(weight)
  if problem:
    raise ValueError(f"quant.kernels.qdot: {problem}")
  k = weight.values.shape[-2] * weight.group
  if x.ndim != 2 or x.shape[1] != k:
    raise ValueError(f"quant.kernels.qdot: x (rows, {k}) for a weight of shape {weight.shape}, got {x.shape}")
  return _qdot(x.astype(jnp.float32), weight, activations)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _qdot(x, weight, activations):
  if not available():
    return reference(x, weight, activations=activations)
  return jax.lax.platform_dependent(x, weight, cpu=functools.partial(_ffi, activations=activations),
                                    default=functools.partial(reference, activations=activations))


def _ffi(x, weight, *, activations):
  # The handler takes a stack of weights and the index of the one to use: a layer of a scanned stack (`layer` set)
  # is read in place; a lone weight is a stack of one.
  stack = (lambda a: a) if weight.layer is not None else (lambda a: a[None])
  layer = jnp.zeros((), jnp.int32) if weight.layer is None else jnp.asarray(weight.layer, jnp.int32)
  offset = weight.offset if weight.offset is not None else weight.scale   # read only for q4_1
  n = weight.values.shape[-3]
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32), vmap_method="sequential")
  return call(x, stack(weight.values), stack(weight.scale), stack(offset), layer,
              kind=np.int32(_KIND_CODES[weight.kind]), int8_activations=np.int32(activations == "int8"))


def _qdot_forward(x, weight, activations):
  return _qdot(x, weight, activations), weight


def _qdot_backward(activations, weight, cotangent):
  del activations   # the gradient of either arithmetic is taken as the float one's (straight through)
  dx = jax.lax.dot_general(cotangent, _dequantized_rows(weight), (((1,), (0,)), ((), ())))
  zeros = jax.tree_util.tree_map(
      lambda a: np.zeros(a.shape, jax.dtypes.float0) if jnp.issubdtype(a.dtype, jnp.integer) else jnp.zeros_like(a),
      weight)
  return dx, zeros


_qdot.defvjp(_qdot_forward, _qdot_backward)


def _dequantized_rows(weight) -> jax.Array:
  """The weight as float32 in its stored layout, (n, k)."""
  weight = weight.selected()
  grouped = weight._weights(weight.integers())   # noqa: SLF001  (the weight's own arithmetic, one place)
  return grouped.reshape(grouped.shape[0], -1)


def reference(x: jax.Array, weight, *, activations: str = "float32") -> jax.Array:
  """What the kernel computes, in plain JAX: the dequantized weight's product (float32), or llama.cpp's int8
  arithmetic (x in blocks of 32 scaled by max|x| / 127 and rounded half away from zero, exact int32 dots per
  block, then the weight's and the block's scales, and the 4-bit kinds' shifts times the block's dequantized sum)."""
  x = x.astype(jnp.float32)
  if activations == "float32":
    return jax.lax.dot_general(x, _dequantized_rows(weight), (((1,), (1,)), ((), ())))
  rows, k = x.shape
  weight = weight.selected()
  n, blocks = weight.values.shape[0], k // BLOCK
  xb = x.reshape(rows, blocks, BLOCK)
  xd = jnp.max(jnp.abs(xb), axis=-1) / 127
  inverse = jnp.where(xd == 0, 0.0, 1.0 / jnp.where(xd == 0, 1.0, xd))
  xq = (jnp.sign(xb) * jnp.floor(jnp.abs(xb) * inverse[..., None] + 0.5)).astype(jnp.int32)
  wq = weight.integers().reshape(n, blocks, BLOCK)
  dots = jnp.einsum("rtk,ntk->rnt", xq, wq, preferred_element_type=jnp.int32).astype(jnp.float32)
  per_group = weight.group // BLOCK
  d = jnp.repeat(weight.scale.astype(jnp.float32), per_group, axis=1)          # (n, blocks)
  y = jnp.sum(dots * d[None] * xd[:, None, :], axis=-1)
  if weight.kind != "int8":
    shift = -8.0 * d if weight.kind == "q4" else weight.offset.astype(jnp.float32)
    block_sums = xd * jnp.sum(xq, axis=-1).astype(jnp.float32)                 # (rows, blocks)
    y = y + block_sums @ shift.T
  return y


__all__ = ["ACTIVATIONS", "available", "isa", "qdot", "reference", "supports"]
