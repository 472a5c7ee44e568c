"""Every list of methods is derived from its registry: presets, validation and compare read
rl/algorithms' registries, and no source file lists registered names by hand."""

import ast
import os
import runpy

import pytest

from configs import common
from r3jax.core import registry
from r3jax.core.errors import ConfigError
from r3jax.losses import preference
from r3jax.models import engines
from r3jax.rewards import scorers
from r3jax.rl import algorithms
from r3jax.trainers import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRIES = {"ADVANTAGES": algorithms.ADVANTAGES, "POLICY_LOSSES": algorithms.POLICY_LOSSES,
              "KL_ESTIMATORS": algorithms.KL_ESTIMATORS, "LOSS_TERMS": algorithms.LOSS_TERMS,
              "METHODS": algorithms.METHODS, "ENGINES": engines.ENGINES,
              "LOSSES": preference.LOSSES, "REWARDS": scorers.REWARDS}


def grpo_config(preset):
  return runpy.run_path(os.path.join(ROOT, "configs", "grpo_qwen.py"))["get_config"](preset)


def test_the_registry_looks_up_by_name_and_names_the_field_of_an_unknown_one():
  r = registry.Registry("widget")

  @r.register("a")
  def a():
    return 1

  assert r["a"].fn is a and r.names() == ("a",) and "a" in r and len(r) == 1
  with pytest.raises(ConfigError, match=r"^config.x.kind='b': unknown widget; expected one of a$"):
    r.get("b", "x.kind")
  with pytest.raises(ValueError, match="registered twice"):
    r.register("a")(a)


def test_every_method_but_ppo_has_a_grpo_preset_that_validates():
  for name, method in algorithms.METHODS.items():
    if name == "ppo":
      continue
    c = grpo_config(f"tiny-{name}")
    assert (c.ppo.advantage, c.ppo.policy_loss) == (method.advantage, method.policy_loss)
    validate.validate(c)
  with pytest.raises(ValueError, match="expected tiny-<method>"):
    grpo_config("tiny-nope")


def test_a_method_added_to_the_registry_reaches_presets_compare_and_validation(monkeypatch):
  """One entry in METHODS (here added for the test) is all a new method needs."""
  from r3jax import compare  # pylint: disable=g-import-not-at-top

  def settings(c):
    c.ppo.loss_agg = "token_sum"

  monkeypatch.setitem(algorithms.METHODS._entries, "rloo_gspo",  # pylint: disable=protected-access
                      algorithms.Method(settings, advantage="rloo", policy_loss="gspo"))
  c = grpo_config("tiny-rloo_gspo")
  validate.validate(c)
  assert (c.ppo.advantage, c.ppo.policy_loss, c.ppo.loss_agg) == ("rloo", "gspo", "token_sum")
  assert c.rollout.n == 4 and c.ppo.value_warmup_steps == 0  # A group method, no value model.
  runs = compare.runs(common.ppo_tiny(), ["r3"], ["ppo", "rloo_gspo"])
  assert list(runs) == ["ppo", "rloo_gspo"]
  assert runs["rloo_gspo"].ppo.policy_loss == "gspo" and runs["ppo"].ppo.advantage == "gae"


@pytest.mark.parametrize("field,reg", [("ppo.advantage", "ADVANTAGES"),
                                       ("ppo.policy_loss", "POLICY_LOSSES"),
                                       ("kl.estimator", "KL_ESTIMATORS"),
                                       ("rollout.engine", "ENGINES")])
def test_validation_reads_the_registries(field, reg):
  for name in REGISTRIES[reg]:
    c = algorithms.use_method(common.ppo_tiny(), "grpo")
    section, key = field.split(".")
    c[section][key] = name
    if reg == "ADVANTAGES" and REGISTRIES[reg][name].uses_value:
      c.rollout.n = 2
    validate.validate(c)
  c = common.ppo_tiny()
  section, key = field.split(".")
  c[section][key] = "nope"
  names = ", ".join(REGISTRIES[reg])
  with pytest.raises(ConfigError, match=f"config.{field}='nope': unknown .*; expected one of {names}$"):
    validate.validate(c)


def hand_lists(path, names):
  """Tuple, list and set literals in a file holding two or more of `names` (a hand-kept
  list of registered methods)."""
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      found = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
      if len(found) >= 2:
        yield f"{path}:{node.lineno} {found}"


# Tuples that name registered entries on purpose: R³'s modes are defined where the R3 class
# implements them (REWARDS registers each from there); compare's --modes default is one
# chosen pair (the R³ paper's reward-hacking comparison), not a list of every reward.
ALLOWED = {os.path.join("r3jax", "rewards", "r3.py"), os.path.join("r3jax", "compare.py")}


def test_no_source_lists_registered_names_by_hand():
  files = [os.path.join(d, f) for top in ("r3jax", "configs") for d, _, fs in os.walk(os.path.join(ROOT, top))
           for f in fs if f.endswith(".py") and os.path.relpath(os.path.join(d, f), ROOT) not in ALLOWED]
  bad = []
  for reg in REGISTRIES.values():
    names = set(reg) - {"policy", "value", "kl", "ptx", "entropy"}  # Also common words.
    for path in files:
      bad += hand_lists(path, names)
  assert not bad, "\n".join(bad)


def test_a_preference_loss_added_to_the_registry_reaches_the_schema_and_validation(monkeypatch):
  """One LOSSES entry (here added for the test): its parameters get their defaults in every
  DPO config, validation accepts it by name, and a reference-free one plans no reference."""
  from r3jax.trainers import memory  # pylint: disable=g-import-not-at-top

  def margin_only(h_w_B, h_l_B, *, beta, margin):
    return (margin - beta * (h_w_B - h_l_B)) ** 2, beta * h_w_B, beta * h_l_B

  monkeypatch.setitem(preference.LOSSES._entries, "margin_only",  # pylint: disable=protected-access
                      preference.PreferenceLoss(margin_only, needs_reference=False,
                                                params={"margin": 1.0}))
  c = common.dpo_tiny()
  assert c.loss.margin == 1.0
  c.loss.type = "margin_only"
  validate.validate(c)
  plan = memory.plan(c, {"data": 1, "fsdp": 1, "tensor": 1})
  assert plan["rows"]["reference (none with loss.type=margin_only)"] == 0 and plan["reference_saved"] > 0
  c.loss.type = "nope"
  with pytest.raises(ConfigError, match="config.loss.type='nope': unknown preference loss; expected one of "
                                        + ", ".join(preference.LOSSES)):
    validate.validate(c)


def test_a_reward_added_to_the_registry_reads_the_whole_prompt_row(monkeypatch, tmp_path):
  """One REWARDS entry: PPO's validation accepts it by name, and it sees every field of
  the prompt row, which the readers pass through (here an answer key)."""
  import json  # pylint: disable=g-import-not-at-top
  from r3jax.data import sources  # pylint: disable=g-import-not-at-top

  def exact(section, *, max_len, seed, mesh):
    del section, max_len, seed, mesh
    return lambda rows, ys: {"reward": [float(r["answer"] in y) for r, y in zip(rows, ys)]}

  monkeypatch.setitem(scorers.REWARDS._entries, "exact", scorers.Reward(exact))  # pylint: disable=protected-access
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n"
                  + json.dumps({"instruction": "3+3?", "output": "6", "answer": "6"}) + "\n")
  c = common.ppo_tiny()
  c.reward.mode, c.data.prompts = "exact", str(path)
  validate.validate(c)
  rows = sources.prompts(c.data)
  assert [r["answer"] for r in rows] == ["4", "6"] and rows[1]["reference"] == "6"
  got = scorers.Mix("exact", c.reward)(rows, ["It is 4.", "It is 5."])
  assert list(got["reward"]) == [1.0, 0.0]
