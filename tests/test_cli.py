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
