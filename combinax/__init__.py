"""combinax: Trax-style combinator layers on JAX.

>>> import combinax as cx
>>> from combinax import layers as cl
>>> model = cl.Serial(cl.Dense(4), cl.Relu(), cl.Dense(2))
>>> model.output_signature(cx.ShapeDtype((8, 3)))
ShapeDtype((8, 2), float32)
"""

from combinax import data, decoding, layers, models, pretrained
from combinax.layers.base import LayerError
from combinax.paths import count_params, leaves_with_paths, mask, matches, paths, select
from combinax.shapes import ShapeDtype, signature

__version__ = "0.1.0"
