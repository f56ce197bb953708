"""gin registration, one call per package (as Trax's `layers/__init__.py` does), so that the modules defining layers,
models, data stages and training pieces read as plain JAX and Python."""

from __future__ import annotations

import inspect
import sys
import types
import typing
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


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}


def _scalar_types(annotation) -> tuple | None:
  """The plain types an annotation such as `int`, `float | None` or `"str"` allows; None for anything richer (a
  layer, a callable, an array), which is left to the configurable itself."""
  if isinstance(annotation, str):
    names = [name.strip() for name in annotation.split("|")]
    return tuple(_SCALARS[n] for n in names) if all(n in _SCALARS for n in names) else None
  if annotation in _SCALARS.values():
    return (annotation,)
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    arguments = typing.get_args(annotation)
    return arguments if all(a in _SCALARS.values() for a in arguments) else None
  return None


def _fits(value, allowed: tuple) -> bool:
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return any((kind is float and number) or (kind is int and isinstance(value, int) and not isinstance(value, bool))
             or (kind is not float and kind is not int and isinstance(value, kind)) for kind in allowed)


def binding_type_errors(config: str) -> list[str]:
  """One line per binding of `config` (gin's text, e.g. `gin.config_str()`) whose literal value is not of the type
  the configurable's parameter is annotated with: `TransformerLM.d_model: expected int, got '32' (str)`.

  Caught here, at the edge, a string where a number belongs never reaches a layer, where it would fail as a
  formatting or comparison error far from the binding that caused it. Macros (`%NAME`) are followed to their value.
  """
  from gin import config_parser
  statements = [s for s in config_parser.ConfigParser(config, gin.config.ParserDelegate(skip_unknown=True))
                if isinstance(s, config_parser.BindingStatement)]
  macros = {s.selector: s.value for s in statements if not s.arg_name}   # `NAME = value`
  errors = []
  for statement in statements:
    value = statement.value
    while isinstance(value, gin.config.ConfigurableReference) and str(value).startswith("%"):
      value = macros.get(str(value)[1:])
    if not statement.arg_name or isinstance(value, gin.config.ConfigurableReference):
      continue
    try:
      parameter = inspect.signature(gin.get_configurable(statement.selector)).parameters.get(statement.arg_name)
    except (ValueError, TypeError):   # not a configurable of this program (skip_unknown), or no signature
      continue
    allowed = _scalar_types(parameter.annotation) if parameter is not None else None
    if allowed is not None and not _fits(value, allowed):
      name = f"{statement.scope + '/' if statement.scope else ''}{statement.selector}.{statement.arg_name}"
      expected = " or ".join(kind.__name__ if kind is not type(None) else "None" for kind in allowed)
      errors.append(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
  return errors


def code_in_config(config: str) -> list[tuple[int, str]]:
  """(line number, statement) of each `import` and `include` in gin's text `config` that would run or read
  anything: gin imports each module an `import` names (and `from __gin__ import dynamic_registration` lets the
  bindings call any function of them) and parses each file an `include` names. An import of a combinax module
  already imported is left out: the configurables a run needs are combinax's, registered with it, and gin's import
  of a loaded module runs nothing. Found without importing or reading anything; a syntax error ends the search,
  where gin's own parse would stop too."""
  from gin import config_parser
  found = []
  try:
    for statement in config_parser.ConfigParser(config, gin.config.ParserDelegate(skip_unknown=True)):
      if isinstance(statement, config_parser.ImportStatement) and not (
          statement.module.split(".")[0] == "combinax" and statement.module in sys.modules):
        found.append((statement.location.line_num, statement.format()))
      elif isinstance(statement, config_parser.IncludeStatement):
        found.append((statement.location.line_num, f"include {statement.filename!r}"))
  except SyntaxError:
    pass
  return found
