"""Generation report of a policy against a baseline (the library of r3jax/eval_gen.py)."""


import collections
import dataclasses
import json
import os
import sys

import jax
import numpy as np

from r3jax.core import plots
from r3jax.data import chat, readers, sources, tokenizer as tokenizer_lib
from r3jax.eval import accuracy, gold, llm_judge, text_metrics as tm
from r3jax.models import hf, engines, sampling
from r3jax.rewards import r3, scorers, verifiable


@dataclasses.dataclass(frozen=True)
class Options:
  """What eval_gen's flags set: see r3jax/eval_gen.py."""
  prompts: str = "synthetic"
  samples: int = 10
  top_p: float = 0.9
  max_new_tokens: int = 128
  max_prompt_len: int = 256
  batch: int = 16
  judge: str = "gold,r3"  # Comma-separated judges of the win rate; gold where rows allow it.
  seed: int = 0
  engine: str = "continuous"  # models/engines.ENGINES.
  slots: int = 0  # Sequences decoding at once (0: all of a batch).


_POSITIONS = 8  # Sentence positions shown in the relevance plot.


def generate(cfg, params, tok, rows, n: int, greedy: bool, seed: int, opts: Options):
  """(texts [P][n], token counts [P][n], truncated prompt count): answers to each row's
  prompt; a count is of the generated tokens, the stop token excluded."""
  sample_cfg = sampling.sample_config(tok, max_new_tokens=opts.max_new_tokens, top_p=opts.top_p,
                                greedy=greedy, n=n, engine=opts.engine, slots=opts.slots)
  check_context(cfg, opts)
  out, counts, truncated, bs = [], [], 0, opts.batch
  for i in range(0, len(rows), bs):
    chunk = rows[i:i + bs]
    ids = sampling.chat_ids(tok, [chat.as_messages(r["prompt"]) for r in chunk])
    truncated += sum(len(x) > opts.max_prompt_len for x in ids)
    ids += [ids[-1]] * (bs - len(ids))  # One batch shape: one compile.
    texts, s = engines.generate_text(params, cfg, tok, ids, jax.random.fold_in(jax.random.key(seed), i),
                                      sample_cfg, length=opts.max_prompt_len)  # Keeps each prompt's end.
    texts = [t.strip() for t in texts]
    lens = np.asarray(s.mask_BN).sum(-1) - np.asarray(s.stopped_B)
    out += [texts[j * n:(j + 1) * n] for j in range(len(chunk))]
    print(f"{'greedy' if greedy else f'{n} samples'}: {len(out)}/{len(rows)} prompts answered",
          file=sys.stderr, flush=True)
    counts += [list(lens[j * n:(j + 1) * n]) for j in range(len(chunk))]
  return out, counts, truncated


def check_context(cfg, opts: Options, path: str = "") -> None:
  """A ValueError when a prompt and its answer may not fit the model's context."""
  if opts.max_prompt_len + opts.max_new_tokens > cfg.max_position_embeddings:
    raise ValueError(f"{path + ': ' if path else ''}max_prompt_len + max_new_tokens = "
                     f"{opts.max_prompt_len + opts.max_new_tokens} exceeds the model's context of "
                     f"{cfg.max_position_embeddings}")


def greedy_answers(path: str, opts: Options):
  """rows -> [greedy answer] of the model at `path` (loaded once)."""
  cfg, params = hf.load(hf.model_dir(path), dropout_rate=0.0)
  tok = tokenizer_lib.load(hf.model_dir(path))
  return lambda rows: [g[0] for g in generate(cfg, params, tok, rows, 1, True, opts.seed, opts)[0]]


def model_stats(name, path, rows, encoder, reward, opts: Options):
  """Answers and per-answer statistics of one model."""
  cfg, params = hf.load(hf.model_dir(path), dropout_rate=0.0)
  tok = tokenizer_lib.load(hf.model_dir(path))
  greedy, counts, truncated = generate(cfg, params, tok, rows, 1, True, opts.seed, opts)
  answers = [g[0] for g in greedy]
  samples = ([[] for _ in rows] if not opts.samples else  # --samples=0: greedy answers only.
             generate(cfg, params, tok, rows, opts.samples, False, opts.seed + 1, opts)[0])
  queries = [chat.as_text(r["prompt"]) for r in rows]
  comps = reward(queries, answers, [r.get("reference") for r in rows], [r.get("query_type") for r in rows])
  cut = [r3.truncate_response(a) for a in answers]
  s = {
      "answers": answers, "samples": samples, "truncated_prompts": truncated,
      # Generated tokens; an answer cut at a role marker counts its kept text's tokens.
      "tokens": np.array([c[0] if y == a else len(tok.encode(y, add_special_tokens=False))
                          for c, a, y in zip(counts, answers, cut)], float),
      "rep4": np.array([tm.ngram_repetition(a, 4) for a in cut]),
      "relevance": comps["relevance"],
      "copies": np.array([tm.copies_query(q, a) for q, a in zip(queries, cut)], float),
      "self_bleu": np.array([tm.self_bleu(x) if x else np.nan for x in samples]),
  }
  refs = [(i, r["reference"]) for i, r in enumerate(rows) if r.get("reference")]
  s["rouge_l"] = np.array([tm.rouge_l(cut[i], ref) for i, ref in refs])
  if gold.applicable(rows):
    s["gold"] = gold.judge_batch(cut, rows)
  if accuracy.applicable(rows):
    s["accuracy"] = accuracy.stats(rows, answers, samples)
  s["distinct2"] = tm.distinct_n(cut, 2)
  names = [r.get("entity") for r in rows]
  s["top_sentence_share"] = tm.top_sentence_share(cut, names)
  s["distinct_answers"] = tm.distinct_answers(cut, names)
  # Relevance of the k-th sentence to the query, for the first _POSITIONS sentences.
  pos = [(q, k, sent) for q, a in zip(queries, cut) for k, sent in enumerate(tm.sentences(a)[:_POSITIONS])]
  by_pos = collections.defaultdict(list)
  if pos:
    qe = encoder.encode([p[0] for p in pos])
    se = encoder.encode([p[2] for p in pos])
    for (_, k, _), v in zip(pos, np.sum(qe * se, -1)):
      by_pos[k].append(float(v))
  s["relevance_by_position"] = {k: float(np.mean(v)) for k, v in sorted(by_pos.items())}
  print(f"{name}: {len(rows)} prompts answered ({truncated} prompts truncated)", file=sys.stderr)
  return s


def write_plots(out, stats, types):
  plt = plots.plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  hi = max(max(s["tokens"].max(initial=0) for s in stats.values()), 1)
  for name, s in stats.items():
    ax.hist(s["tokens"], bins=np.linspace(0, hi, 21), alpha=0.5, label=name)
  ax.set_xlabel("answer tokens")
  ax.set_ylabel("prompts")
  ax.set_title("Answer length")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "length_hist.png"), dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, s in stats.items():
    k = sorted(s["relevance_by_position"])
    ax.plot([x + 1 for x in k], [s["relevance_by_position"][x] for x in k], marker="o", label=name)
  ax.set_xticks(range(1, _POSITIONS + 1))
  ax.set_xlabel("sentence position")
  ax.set_ylabel("relevance to the query")
  ax.set_title("Relevance by sentence position")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "relevance_by_position.png"), dpi=100)
  plt.close(fig)

  if np.isnan(next(iter(stats.values()))["self_bleu"]).all():
    return  # No samples were drawn (--samples=0).
  table = {}
  for name, s in stats.items():
    table[name] = {}
    for t in sorted(set(types)):
      v = s["self_bleu"][np.array(types) == t]
      half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
      table[name][t] = (v.mean(), v.mean() - half, v.mean() + half)
  plots.grouped_bars(os.path.join(out, "self_bleu_by_type.png"), table, "Self-BLEU",
                    "Self-BLEU by query type (95% CI)")


def report(out, rows, stats, win, types, skipped, opts: Options, extra=()) -> str:
  """report.md: the tables of every model, the win rates, then `extra` lines."""
  names = list(stats)
  f = lambda v, fmt="{:.3f}": fmt.format(float(np.mean(v))) if len(v) and not np.isnan(v).all() else "n/a"
  lines = [f"# Generation report: {', '.join(names)}", "",
           f"{len(rows)} prompts from `{opts.prompts}`; greedy answers of at most "
           f"{opts.max_new_tokens} tokens; Self-BLEU over {opts.samples} samples at top-p {opts.top_p}.",
           "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for label, key, fmt in (("average tokens", "tokens", "{:.1f}"), ("4-gram repetition", "rep4", "{:.3f}"),
                          ("relevance (cosine)", "relevance", "{:.3f}"),
                          ("copies the query", "copies", "{:.1%}"), ("Self-BLEU", "self_bleu", "{:.1f}"),
                          ("ROUGE-L vs reference", "rouge_l", "{:.3f}")):
    lines.append(f"| {label} | " + " | ".join(f(stats[n][key], fmt) for n in names) + " |")
  for label, key in (("distinct-2 (all answers)", "distinct2"),
                     ("distinct answers (names removed)", "distinct_answers"),
                     ("most common sentence's share", "top_sentence_share")):
    lines.append(f"| {label} | " + " | ".join(f"{stats[n][key]:.3f}" for n in names) + " |")
  lines.append("| prompts truncated | " + " | ".join(str(stats[n]["truncated_prompts"]) for n in names) + " |")
  lines += gold_lines(stats, names)
  lines += accuracy.lines(stats, opts.samples, opts.top_p)
  n_ref = len(stats[names[0]]["rouge_l"])
  lines += ["", f"ROUGE-L uses the {n_ref} prompts with a reference answer (the alignment tax "
            "when the baseline is the SFT model)." if n_ref else "No prompt has a reference answer: no ROUGE-L."]
  lines += ["", "## Self-BLEU by query type", "", "| query type | prompts | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
  for t in sorted(set(types)) if opts.samples else []:
    m = np.array(types) == t
    lines.append(f"| {t} | {int(m.sum())} | " + " | ".join(f"{stats[n]['self_bleu'][m].mean():.1f}" for n in names) + " |")
  for judge_name, w in (win or {}).items():
    lines += ["", f"## Win rate, judged by `{judge_name}` in both orders", "",
              f"{names[0]} vs {names[1]}: **{w['win_rate']:.1%}** (95% interval over prompts "
              f"{w['ci95'][0]:.1%}–{w['ci95'][1]:.1%}; wins {w['wins']}, ties {w['ties']}, "
              f"losses {w['losses']} of {w['judgements']} {w.get('unit', 'judgements')})."]
    if "position_bias" in w:  # An LLM judge's own calibration, beside its verdicts.
      lines.append(f"Position bias (the verdict follows the order): {w['position_bias']:.1%} of "
                   f"the prompts with both verdicts read; unreadable verdicts: {w['unreadable']} "
                   f"of {2 * w['judgements']} (scored as ties).")
  if skipped:
    lines += ["", f"{len(skipped)} malformed prompt rows skipped, e.g. `{skipped[0]}`."]
  lines += list(extra)
  lines += ["", "![length](length_hist.png) ![relevance](relevance_by_position.png) "
            "![self-bleu](self_bleu_by_type.png)", ""]
  text = "\n".join(lines)
  with open(os.path.join(out, "report.md"), "w") as fh:
    fh.write(text)
  return text




_GOLD_ROWS = (("gold score (precision × recall)", "score"), ("gold precision", "precision"),
              ("gold recall", "recall"), ("repeated claims per answer", "repeats"),
              ("names the asked entity", "names_entity"))


def gold_lines(stats, names) -> list[str]:
  """The gold judge's table (eval/gold.py): means over prompts with 95% intervals."""
  if "gold" not in stats[names[0]]:
    return ["", "No gold judge for these prompts (they are not questions about the embedded world)."]
  lines = ["", "## Gold judge (the embedded world's facts; not the optimised reward)", "",
           "Mean [95% interval] over prompts. Recall: share of the six facts stated truly "
           "(open-ended), the asked fact stated truly (closed-ended).", "",
           "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for label, key in _GOLD_ROWS:
    cell = lambda v: "{:.3f} [{:.3f}, {:.3f}]".format(*tm.mean_ci(v))
    lines.append(f"| {label} | " + " | ".join(cell(stats[n]["gold"][key]) for n in names) + " |")
  return lines


def load_rows(prompts: str, limit: int, skip_bad: bool):
  """(rows, query types, skipped): a prompt file, or "synthetic[:<task>]": an embedded task's
  held-out prompts (data/sources.TASKS; "world", 200 questions about the embedded entities
  on another seed than training, by default)."""
  if prompts.split(":")[0] == "synthetic":
    task = sources.TASKS.get(prompts.partition(":")[2] or "world")
    loaded = readers.Loaded([dict(q, where=f"{prompts}:{i}") for i, q in enumerate(task.held_out())], [])
  else:
    loaded = readers.load_prompts(prompts, skip_bad)
  rows = loaded.rows[:limit] if limit else loaded.rows
  types = []
  for r in rows:
    try:
      types.append(r3.query_type(r.get("query_type")) or "unlabelled")
    except ValueError as e:
      raise readers.DataError(f"{r['where']}: field 'query_type': {e}") from None
  return rows, types, loaded.skipped


def judges(spec: str, rows, max_len: int) -> dict:
  """{name: pointwise judge(rows, answers) -> [N], or an llm_judge.PairwiseJudge} from a
  comma-separated list: "gold" (the embedded world's gold score; dropped with a note for
  other prompts), "llm:DIR" / "llm-prob:DIR" (a checkpoint judging pairs by its verdict
  text / its next-token probabilities), or any rewards/scorers.make spec."""
  out = {}
  for name in [x.strip() for x in spec.split(",") if x.strip()]:
    if name == "gold":
      if gold.applicable(rows):
        out[name] = lambda rs, a: gold.judge_batch([r3.truncate_response(x) for x in a], rs)["score"]
      else:
        print("judge gold: these prompts are not questions about the embedded world; skipped",
              file=sys.stderr)
      continue
    if name.startswith("llm:"):  # A checkpoint as a pairwise judge: llm:DIR or llm-prob:DIR.
      out[name] = llm_judge.PairwiseJudge.load(name[len("llm:"):])
      continue
    if name.startswith("llm-prob:"):
      out[name] = llm_judge.PairwiseJudge.load(name[len("llm-prob:"):], mode="prob")
      continue
    scorer = scorers.make(name, max_len=max_len)
    out[name] = lambda rs, a, f=scorer: np.asarray(f(rs, a)["reward"])
  return out


def judged_win_rate(judge, rows, stats) -> dict:
  """The policy's adjusted win rate over the baseline under a pointwise judge: each answer
  set is scored once, and both orders read the same scores."""
  queries = [chat.as_text(r["prompt"]) for r in rows]
  answers = {n: stats[n]["answers"] for n in ("policy", "baseline")}
  if isinstance(judge, llm_judge.PairwiseJudge):  # Pairwise, each order judged apart.
    return judge.win_rate(queries, answers["policy"], answers["baseline"])
  score = {n: np.asarray(judge(rows, a)) for n, a in answers.items()}
  name = lambda x: "policy" if x is answers["policy"] else "baseline"
  pref = lambda p, a, b: score[name(a)] - score[name(b)]
  return tm.win_rate(pref, queries, answers["policy"], answers["baseline"])


def write_answers(out: str, rows, stats) -> None:
  """answers.jsonl: each prompt with every model's greedy answer; on keyed prompts also the
  answer read from it (`<model>_extracted`, null when none) and whether it is right."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "answers.jsonl"), "w") as fh:
    for i, r in enumerate(rows):
      graded = {}
      for n, s in stats.items():
        if "accuracy" in s:
          graded.update({f"{n}_extracted": verifiable.extract(s["answers"][i]),
                         f"{n}_correct": bool(s["accuracy"]["greedy"][i])})
      fh.write(json.dumps({"where": r["where"], "prompt": r["prompt"],
                           **{n: s["answers"][i] for n, s in stats.items()}, **graded}) + "\n")
