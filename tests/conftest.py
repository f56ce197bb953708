"""Every test sees 8 CPU devices (an isolated one the devices it asks for) and strict rank promotion, as the layer
contract promises."""

import os

# (COMBINAX_TEST_DEVICES: set only for the process of an isolated test, below.) LLVM's optimisations off: the tests'
# programs are small and run a few times, so compiling them is most of their time (the growth recipe's test: 21.6 of
# its 37 s); without them, its test and those of test_transformer.py took 81 s instead of 100 s (measured). XLA's
# own passes (fusion, layout, buffer sharing), which the tests of compiled HLO read, run as they do for users.
# A test whose numbers must match ones computed with them on (a run stored by an older version, resumed bit for bit)
# runs in a process of its own with them on: `@pytest.mark.isolated(optimised=True)`.
_USERS_XLA_FLAGS = os.environ.setdefault("COMBINAX_TEST_USERS_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = " ".join(
    [_USERS_XLA_FLAGS] + ([] if os.environ.get("COMBINAX_TEST_OPTIMISED") == "1" else
                          ["--xla_backend_optimization_level=0"])
    + ["--xla_force_host_platform_device_count=" + os.environ.get("COMBINAX_TEST_DEVICES", "8")]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session, shared by the workers and every process a test starts (they
# inherit the environment): the suite compiles the same small programs over and over (each test builds its models
# anew; the kill, multi-host and CLI tests start `combinax-train` processes that compile the same run). Measured on
# 2 cores: the random-kills test 88.5 s -> 59.6 s, the growth-recipe and ViT tests (-n 2) 139 s -> 110 s. Every
# program is kept (no minimum compile time: most take well under JAX's default 1 s). Only the process that made the
# folder removes it, at the end.
import shutil  # noqa: E402
import tempfile  # noqa: E402

_MADE_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _MADE_COMPILATION_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="combinax-tests-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The same for the bundled pretrained models imported into a cache (tests that want one use `shared_pretrained_cache`
# below): an isolated test's process would otherwise import SmolLM2 again, ~6 s each time.
# The quantized matmul kernel (combinax.quant.kernels) is compiled once (~10 s) where the user's cache keeps it, not
# again in each test that points COMBINAX_CACHE at a folder of its own.
os.environ.setdefault("COMBINAX_KERNELS_DIR", os.path.join(os.environ.get("COMBINAX_CACHE") or
                                                           os.path.expanduser("~/.cache/combinax"), "kernels"))
_MADE_PRETRAINED_CACHE = "COMBINAX_TEST_PRETRAINED_CACHE" not in os.environ
if _MADE_PRETRAINED_CACHE:
  os.environ["COMBINAX_TEST_PRETRAINED_CACHE"] = tempfile.mkdtemp(prefix="combinax-tests-pretrained-")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_numpy_rank_promotion", "raise")


import gc  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from _pytest.reports import TestReport  # noqa: E402


# Clearing after every module cost ~1.5 min of recompiling over the suite; a module adds at most ~14,000 mappings
# (measured), so clearing once past 40,000 keeps well under the limit and recompiles rarely.
_MAPPINGS_BEFORE_CLEARING = 40_000


def _memory_mappings():
  try:
    with open("/proc/self/maps", "rb") as maps:
      return sum(1 for _ in maps)
  except OSError:  # not Linux: no such limit to watch
    return 0


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
  """Drops JAX's compiled programs after a test module once the process holds many memory mappings. Each compiled
  program keeps mappings of its code alive, and over the whole suite in one process they passed the kernel's limit of
  65,530 (`vm.max_map_count`): XLA's compiler then died of a segfault in the last few percent of the run (measured:
  ~100 new mappings a second)."""
  yield
  if _memory_mappings() > _MAPPINGS_BEFORE_CLEARING:
    jax.clear_caches()
    gc.collect()


# --- Memory -----------------------------------------------------------------------------------------------------
# CI's machine has 24 GB for the suite's two workers, and a worker keeps most of what a test made it grow to (XLA's
# compiled programs, the allocator's pages), so one heavy test raises its worker for the rest of the run. Set
# COMBINAX_TEST_MEMORY=<folder> to record each test's peak and what its worker holds after it
# (<folder>/<worker>.tsv: test, peak MB, resident MB); the README gives each worker's peak as measured so.
_MEMORY_LOG = os.environ.get("COMBINAX_TEST_MEMORY")


def _status_mb(field: str) -> int:
  with open("/proc/self/status") as status:
    return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field + ":"))


def pytest_runtest_logstart(nodeid, location):
  if _MEMORY_LOG:
    with open("/proc/self/clear_refs", "w") as clear:   # "5": the peak (VmHWM) starts again from what is resident
      clear.write("5")


def pytest_runtest_logfinish(nodeid, location):
  if _MEMORY_LOG:
    os.makedirs(_MEMORY_LOG, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main") + ("-isolated" if _ISOLATED_CHILD in os.environ else "")
    with open(os.path.join(_MEMORY_LOG, f"{worker}.tsv"), "a") as log:
      log.write(f"{nodeid}\t{_status_mb('VmHWM')}\t{_status_mb('VmRSS')}\n")


# --- Tests in a process of their own ------------------------------------------------------------------------------
# `@pytest.mark.isolated(devices=1)`: the test runs in a fresh `python -m pytest <test>` on `devices` CPU devices,
# so what it makes goes back to the system when it ends instead of staying with its worker. For the end-to-end tests
# that load a real pretrained model: growing MiniLM on 8 simulated devices (8 replicas of everything) peaked at
# 10.4 GB, on 1 device at 1.6 GB (measured), and its worker kept most of it for the rest of the run.
_ISOLATED_CHILD = "COMBINAX_TEST_DEVICES"


def pytest_unconfigure(config):
  if _MADE_COMPILATION_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  if _MADE_PRETRAINED_CACHE:
    shutil.rmtree(os.environ["COMBINAX_TEST_PRETRAINED_CACHE"], ignore_errors=True)


@pytest.fixture
def shared_pretrained_cache():
  """A pretrained-model cache (`COMBINAX_CACHE`) shared by this worker's tests and the processes of its isolated
  ones, so each bundled model is imported once per worker (one folder per worker: two never import into one)."""
  folder = os.path.join(os.environ["COMBINAX_TEST_PRETRAINED_CACHE"], os.environ.get("PYTEST_XDIST_WORKER", "main"))
  os.makedirs(folder, exist_ok=True)
  return folder


def pytest_configure(config):
  config.addinivalue_line("markers", "isolated(devices=1, optimised=False): run the test in a fresh process on that "
                                     "many CPU devices (with LLVM's optimisations on, if optimised)")


def _report(item, when: str, outcome: str, longrepr=None, duration: float = 0.0) -> TestReport:
  return TestReport(item.nodeid, item.location, {name: 1 for name in item.keywords}, outcome, longrepr, when,
                    duration=duration)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
  marker = item.get_closest_marker("isolated")
  if marker is None or _ISOLATED_CHILD in os.environ:
    return None
  devices = marker.kwargs.get("devices", 1)
  item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
  start = time.time()
  optimised = {"COMBINAX_TEST_OPTIMISED": "1"} if marker.kwargs.get("optimised") else {}
  child = subprocess.run([sys.executable, "-m", "pytest", item.nodeid, "-q", "-rs", "-p", "no:faulthandler"],
                         cwd=item.config.rootpath, env={**os.environ, _ISOLATED_CHILD: str(devices), **optimised},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  skipped = re.search(r"^SKIPPED \[\d+\] (.+?):(\d+): (.*)$", child.stdout, re.MULTILINE)
  if child.returncode == 0 and skipped:
    call = _report(item, "call", "skipped", (skipped[1], int(skipped[2]), skipped[3]))
  elif child.returncode == 0:
    call = _report(item, "call", "passed")
  else:
    call = _report(item, "call", "failed", f"in its own process on {devices} device(s), exit code "
                                           f"{child.returncode}:\n{child.stdout[-12000:]}")
  call.duration = time.time() - start
  for report in (_report(item, "setup", "passed"), call, _report(item, "teardown", "passed")):
    item.ihook.pytest_runtest_logreport(report=report)
  # What the tests before this one set up (their module's and folder's fixtures) is torn down here as pytest's
  # own teardown would: the next test, in another folder, found it still set up and errored ("previous item was
  # not torn down properly"; seen in CI after the isolated MiniLM growth test).
  item.session._setupstate.teardown_exact(nextitem)
  item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
  return True
