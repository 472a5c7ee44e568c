"""Test-wide settings (the shared helpers are in tests/helpers.py)."""

import os

# One persistent compilation cache for the whole suite, both workers and every command a
# test starts (they inherit the environment): the many runs of one tiny program (a killed
# run and its resume, the same SFT warm start in several tests) compile it once. The
# programs are the same ones, so what a test checks does not change; a fresh clone starts
# with an empty cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # Tiny programs too.

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Parity tests compare against PyTorch's fp32 matmuls; XLA's CPU default is fp32 too,
# "highest" only makes that explicit for backends that would use bf16 passes.
jax.config.update("jax_default_matmul_precision", "highest")


# Scheduling for `pytest -n 2 --dist loadfile` (.ci/run): each unit below goes to one
# worker whole, and a test in no unit goes with the rest of its file, as plain loadfile
# would do. Units are handed out in this order, longest first (measured: the first four
# take 45-150 s each), so that the run ends with short files and neither worker is left
# with a long unit while the other idles. A long file is split where its tests share no
# costly module fixture: the tests that start from test_preference_trainers.py's SFT run
# (a module fixture) stay in one unit, and that file's other tests go apart.
# (--dist loadgroup cannot do this: xdist 3.8 tags a test's group onto Node._nodeid, which
# pytest 9 no longer reads, so its groups are silently ignored.)
UNITS = (
    ("test_preference_trainers.py", "test_rm_loop_lowers_loss_and_scores_through_eval_pairs",
     "test_dpo_on_8_devices_fits_and_resumes_exactly_after_sigkill",
     "test_rso_on_8_devices_builds_ranked_pairs_and_resumes_exactly_after_sigkill"),
    ("test_ppo_trainer.py",),
    ("test_multiprocess.py", "test_ppo_across_two_processes_then_resumed_by_one"),
    ("test_multiprocess.py", "test_sft_and_dpo_steps_on_two_processes_match_one"),
    ("test_harness.py",),
    ("test_rl_pipeline.py",),
    ("test_plan.py", "test_planned_state_bytes_match_a_real_run"),
    ("test_preference_trainers.py",),
    ("test_eval.py",),
    ("test_lm.py",),
    ("test_reliability.py",),
    ("test_harness.py", "test_exact_resume_after_sigkill_and_sigterm_checkpoint"),
    ("test_qwen.py",),
    ("test_ppo_phases.py",),
    ("test_sampling.py",),
    ("test_plan.py",),
)


def unit_of(nodeid: str) -> int:
  """The index in UNITS of the unit that holds the test `nodeid`: its test's own, else its
  file's; len(UNITS) for the files listed nowhere (short ones, run last)."""
  path, *rest = nodeid.split("::")
  file, name = os.path.basename(path), rest[-1].split("[")[0] if rest else ""
  for i, (unit_file, *names) in enumerate(UNITS):
    if unit_file == file and name in names:
      return i
  for i, (unit_file, *names) in enumerate(UNITS):
    if unit_file == file and not names:
      return i
  return len(UNITS)


def pytest_collection_modifyitems(items):
  # Stable: the order within a unit, and of the files listed nowhere, is kept. xdist hands
  # out units in the order of their first test in this list.
  items.sort(key=lambda item: unit_of(item.nodeid))


class UnitScheduler:
  """A plugin, registered when pytest-xdist is on: --dist loadfile, with the files of UNITS
  split into its units."""

  @staticmethod
  def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
      return None
    from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

    class UnitScheduling(LoadFileScheduling):

      def _split_scope(self, nodeid: str) -> str:
        i = unit_of(nodeid)
        return f"unit {i}" if i < len(UNITS) else super()._split_scope(nodeid)

    # In the order of UNITS: by default xdist would hand out the files with most tests first.
    config.option.loadscopereorder = False
    return UnitScheduling(config, log)


def pytest_configure(config):
  if config.pluginmanager.hasplugin("xdist"):  # Not with -p no:xdist.
    config.pluginmanager.register(UnitScheduler(), "r3jax-unit-scheduler")
