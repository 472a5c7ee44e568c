"""Runs a config: its warm-start stages, then its trainer. Trainers are peers and never call
each other; everything that chains them is here.

  config.stages = ("sft",)   the tiny SFT policy, trained in <workdir>/sft from config.sft
                             (reused once finished), is the start of the main stage. It runs
                             only when neither init_from nor model.hf_dir gives a start.
  config.stages = ("sft", "rm_pmp", "rm")   then each further stage, config.<name> (an sft,
                             rm or dpo config), runs in <workdir>/<name>, in order, reused once
                             it reached its steps. "@<stage>" in a stage's init_from, or in
                             the main stage's reward.mode, names that stage's directory
                             ("@sft": the main stage's start, whatever gave it).
  trainer "rso"              SFT stage -> sampled pairs (trainers/rso.build_pairs) -> DPO
                             (the supervised loop with the DPO task) on those pairs.
  trainer "best_of_n"        SFT stage -> per round: best of N samples -> SFT on them.
"""

import copy
import functools
import os
import re
import sys

# The trainers are imported on use (`trainer`): validation reads only the names, and a bad
# config must fail in well under two seconds.
TRAINERS = ("sft", "ppo", "rm", "dpo", "kto", "rso", "best_of_n")
STAGE_TRAINERS = ("sft", "rm", "dpo")  # What a stage after "sft" may run.
STAGE_REF = re.compile(r"@(\w+)")


def trainer(name: str):
  """The train(config, workdir) function registered under a trainer name: SFT, RM, DPO and
  KTO are tasks of the one supervised loop."""
  from r3jax.trainers import dpo, kto, ppo, rm, sft, supervised  # pylint: disable=g-import-not-at-top
  tasks = {"sft": sft.TASK, "rm": rm.TASK, "dpo": dpo.TASK, "kto": kto.TASK}
  if name in tasks:
    return functools.partial(supervised.train, task=tasks[name])
  return {"ppo": ppo.train, "rso": run_rso, "best_of_n": run_best_of_n}[name]


def log(msg: str) -> None:
  """A stage's progress line, on stderr with the progress bars, from process 0 only."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)


def with_fields(config, **fields):
  """A copy of `config` with top-level fields replaced (the user's config stays as given)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    for k, v in fields.items():
      setattr(c, k, v)
  return c


def finished(workdir: str, steps: int) -> bool:
  from r3jax.core import checkpoint  # pylint: disable=g-import-not-at-top
  return (checkpoint.exists(workdir) and
          checkpoint.manager(workdir, 1, 1, False).latest_step() == steps)


def sft_stage(config, workdir: str) -> str:
  """The tiny SFT run in workdir/sft (trained, or reused once it reached sft.steps)."""
  sft_dir = os.path.join(workdir, "sft")
  if finished(sft_dir, config.sft.steps):
    log(f"SFT warm start: reusing {sft_dir}")
  else:
    log(f"SFT warm start: training the tiny SFT policy in {sft_dir}")
    trainer("sft")(config.sft, sft_dir)
  return sft_dir


def resolve(spec: str, dirs: dict[str, str]) -> str:
  """"@name" -> the directory of stage `name` (validation has checked that it exists)."""
  return STAGE_REF.sub(lambda m: dirs[m.group(1)], spec)


def later_stages(config, workdir: str, dirs: dict[str, str]) -> dict[str, str]:
  """Runs config.stages after "sft" in order, each config.<name> in <workdir>/<name> (reused
  once it reached its steps); returns every stage's directory."""
  for name in config.stages:
    if name == "sft":
      continue
    c = with_fields(config[name], init_from=resolve(config[name].init_from, dirs))
    path = os.path.join(workdir, name)
    if finished(path, c.steps):
      log(f"stage {name}: reusing {path}")
    else:
      log(f"stage {name}: training {c.trainer} in {path}")
      run(c, path)
    dirs[name] = path
  return dirs


def start(config, workdir: str) -> str:
  """Where the main stage's weights come from: init_from (which may be "random"), the HF
  model, or the warm-start stages' output ("" when there is none: random weights)."""
  if config.init_from:
    return config.init_from
  if config.model.hf_dir or "sft" not in config.stages:
    return config.model.hf_dir
  return sft_stage(config, workdir)


def run(config, workdir: str):
  """Runs the config's trainer after its stages; returns the trainer's result."""
  if config.trainer in ("rso", "best_of_n"):  # Pipelines of their own, stages included.
    return trainer(config.trainer)(config, workdir)
  init_from = start(config, workdir)
  dirs = later_stages(config, workdir, {"sft": init_from})
  c = with_fields(config, init_from=init_from)
  if c.trainer == "ppo" and "@" in c.reward.mode:
    with c.unlocked():
      c.reward.mode = resolve(c.reward.mode, dirs)
  return trainer(c.trainer)(c, workdir)


def run_rso(config, workdir: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  from r3jax.trainers import rso  # pylint: disable=g-import-not-at-top
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  init_dir = start(config, workdir)
  pairs = rso.build_pairs(config, init_dir, workdir, log)
  c = with_fields(config, trainer="dpo", init_from=init_dir)
  with c.unlocked():
    c.data.train = pairs
  return trainer("dpo")(c, workdir)


def run_best_of_n(config, workdir: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  from r3jax.trainers import rso  # pylint: disable=g-import-not-at-top
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  current, result = start(config, workdir), {}
  for rnd in range(1, config.best_of_n.rounds + 1):
    data = rso.best_of_n_round(config, current, workdir, rnd, log)
    c = copy.deepcopy(config.sft)
    with c.unlocked():
      c.init_from, c.data.train, c.steps = current, data, config.best_of_n.sft_steps
      c.tokenizer = config.tokenizer or os.path.join(workdir, "tokenizer")
      c.optim.update(lr=config.best_of_n.lr, warmup_steps=0, schedule="constant")
    rdir = os.path.join(workdir, f"round_{rnd}")
    result = trainer("sft")(c, rdir)
    current = rdir
  return result
