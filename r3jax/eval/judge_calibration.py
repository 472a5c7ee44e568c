"""An LLM judge's calibration, reported beside its verdicts (Zheng et al. 2023, "Judging
LLM-as-a-Judge", §3.3-3.4 and §4.2): how often its verdict follows the order the answers
are shown in, how often it agrees with human labels on a preference set, and on the
embedded world how often it agrees with the gold judge. A win rate means something only
from a judge that is well above chance on the last two with a position bias well below 100%.
"""

import numpy as np

from r3jax.eval import pairs


def human_agreement(judge, rows, name: str) -> dict:
  """The judge's accuracy on comparison rows (pairs.load_set's), every pair in both orders:
  agreeing with the label in both is 1, a tie or a flip 1/2 (the paper's convention and
  eval_pairs'); with its 95% Wilson interval and the judge's position bias there."""
  out = pairs.judge_pairs(judge, rows)
  k, n = out["wins"] + 0.5 * out["ties"], out["judgements"]
  return {"set": name, "accuracy": k / n, "ci95": pairs.wilson(k, n), "pairs": n,
          "ties": out["ties"], "position_bias": out["position_bias"], "unreadable": out["unreadable"]}


def gold_agreement(outcomes, gold_policy, gold_baseline) -> dict:
  """Agreement of the judge's per-prompt outcomes (1: policy wins in both orders, 0.5: tie
  or flip, 0: baseline wins) with the gold judge's preference, over the prompts gold decides
  (its scores differ); a judge's tie counts one half."""
  g = np.sign(np.asarray(gold_policy, np.float64) - np.asarray(gold_baseline, np.float64))
  o = np.asarray(outcomes, np.float64)
  decided = g != 0
  agree = np.where(o == 0.5, 0.5, ((o == 1) & (g > 0)) | ((o == 0) & (g < 0)))[decided]
  k, n = float(agree.sum()), int(decided.sum())
  return {"agreement": k / n if n else float("nan"), "ci95": pairs.wilson(k, n), "decided": n,
          "gold_ties": int(g.size - n), "judge_ties": int(np.sum(o[decided] == 0.5))}


def lines(judge_name: str, bias: dict, human: dict | None, gold: dict | None) -> list[str]:
  """Markdown: position bias on this run's verdicts (`bias`: {label: share}), human-label
  agreement and gold agreement, each, when not measured, with how to measure it."""
  out = ["", f"## Calibration of the judge `{judge_name}`", ""]
  for label, b in bias.items():
    out.append(f"- Position bias, {label}: {b:.1%} of the pairs with both verdicts read "
               "prefer the same position in both orders.")
  if human:
    lo, hi = human["ci95"]
    out.append(f"- Agreement with the labels of `{human['set']}`: **{human['accuracy']:.1%}** "
               f"[{lo:.1%}, {hi:.1%}] over {human['pairs']} pairs judged in both orders ({human['ties']} "
               f"ties or flips, counted 1/2); position bias there {human['position_bias']:.1%}; "
               f"{human['unreadable']} unreadable verdicts.")
  else:
    out.append("- Agreement with human labels: not measured; give --calibration=FILE (a "
               "preference set, e.g. HH-RLHF's) to measure it.")
  if gold and not gold["decided"]:
    out.append(f"- Agreement with the gold judge: gold scored both answers equal on all "
               f"{gold['gold_ties']} prompts, so there is nothing to agree with.")
  elif gold:
    lo, hi = gold["ci95"]
    out.append(f"- Agreement with the gold judge on the {gold['decided']} prompts whose gold "
               f"scores differ: **{gold['agreement']:.1%}** [{lo:.1%}, {hi:.1%}] (the judge tied "
               f"on {gold['judge_ties']}, counted 1/2; gold tied on {gold['gold_ties']} more).")
  else:
    out.append("- Agreement with the gold judge: only on the embedded world's questions "
               "(--prompts=synthetic) with --judge=gold,llm:DIR.")
  return out
