"""combinax-decode reads a run directory's configuration as data: an `import` or `include` in it is refused by name
(which file, which line, why) before gin sees it, so nothing it names is imported or read."""

import sys

import numpy as np
import pytest

from combinax.cli.decode import load_run
from combinax.cli.frame import ConfigError
from combinax.store import checkpoints

BINDING = "TransformerLM.d_model = 16\n"


def run_keeping(folder, config):
  """A run directory whose one checkpoint keeps `config` as the configuration it was trained with."""
  checkpoints.save(folder, 5, {"params": {"w": np.zeros(2, np.float32)}}, {"run": {"config": config}})
  return folder


@pytest.mark.parametrize("statement", [
    "import os",
    "import combinax_no_such_module",
    "from __gin__ import dynamic_registration",
    "include '/etc/passwd'",
])
def test_a_stored_configuration_that_imports_or_includes_is_refused_by_name(tmp_path, statement):
  folder = run_keeping(tmp_path / "run", BINDING + statement + "\n")
  with pytest.raises(ConfigError) as refused:
    load_run(folder)
  message = str(refused.value.code)
  assert message == (f"combinax-decode: the configuration kept in {folder / 'step_00000005'}, line 2: `{statement}` "
                     "refused: a run directory's configuration is data, not code, so it is read with no import or "
                     "include (the modules a run needs are combinax's, already registered)")


def test_nothing_a_stored_configuration_names_is_imported(tmp_path, monkeypatch):
  (tmp_path / "modules").mkdir()
  marker = tmp_path / "imported"
  (tmp_path / "modules" / "writes_a_file.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
  monkeypatch.syspath_prepend(str(tmp_path / "modules"))
  folder = run_keeping(tmp_path / "run", "import writes_a_file\n" + BINDING)
  with pytest.raises(ConfigError, match="line 1: `import writes_a_file` refused"):
    load_run(folder)
  assert not marker.exists() and "writes_a_file" not in sys.modules


def test_the_config_gin_of_an_older_run_is_read_the_same_way(tmp_path):
  folder = tmp_path / "run"
  checkpoints.save(folder, 5, {"params": {"w": np.zeros(2, np.float32)}})   # records no configuration
  (folder / "config.gin").write_text(BINDING + "\n\nimport os\n")
  with pytest.raises(ConfigError, match=f"combinax-decode: {folder / 'config.gin'}, line 4: `import os` refused"):
    load_run(folder)


def test_an_import_of_a_combinax_module_already_registered_is_no_code_and_passes():
  from combinax.configurable import code_in_config
  assert code_in_config("import combinax.models\n" + BINDING) == []
  assert code_in_config("import combinax.models.transformer_xl\n") == [(1, "import combinax.models.transformer_xl")]
