"""gin registration, one call per package (as Trax's `layers/__init__.py` does), so that the modules defining layers,
models, data stages and training pieces read as plain JAX and Python."""

from __future__ import annotations

import sys
from typing import Iterable

import gin


def register(namespace: dict, module: str, names: Iterable[str]) -> None:
  """Makes each `namespace[name]` gin-configurable as `module.name`, as a decorator where it is defined would: a class
  is configured in place; a function is replaced by gin's wrapper in `namespace` and in the module defining it, so
  the code there calls the configured function too. A second name for an object (an alias) gets the same one."""
  configured = {}
  for name in names:
    obj = namespace[name]
    if id(obj) not in configured:
      configured[id(obj)] = gin.configurable(obj, module=module)
      if configured[id(obj)] is not obj:
        setattr(sys.modules[obj.__module__], obj.__name__, configured[id(obj)])
    namespace[name] = configured[id(obj)]
