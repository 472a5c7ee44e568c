"""The sample command runs end to end on the tiny preset."""

import subprocess
import sys
from helpers import why


def test_sample_command():
  out = subprocess.run(
      [sys.executable, "-m", "r3jax.sample", "--model=tiny", "--prompt=Please tell me about Nivo.",
       "--max_new_tokens=8", "--top_p=0.9", "--n=2"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, why(out)
  assert out.stdout.count("### prompt 0 sample") == 2
  bad = subprocess.run([sys.executable, "-m", "r3jax.sample", "--model=/no/such/dir"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "neither a directory nor a preset" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_sample_flag_out_of_range_exits_2_in_one_line():
  """The exit status through app.run (tests/test_command_flags.py checks every flag in-process)."""
  out = subprocess.run([sys.executable, "-m", "r3jax.sample", "--max_new_tokens=-5"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stdout == "", why(out)
  assert out.stderr.splitlines() == ["error: --max_new_tokens=-5: expected an integer in [1, inf)"], why(out)
