r"""Generation statistics of a policy, optionally against a baseline (SPEC §7, seed 002 §3).

  python -m r3jax.eval_gen --policy=runs/ppo_tiny --baseline=runs/ppo_tiny/sft \
      --prompts=../shared/data/vicuna_bench_questions.jsonl --out=runs/eval_gen

--policy / --baseline: a run directory (its exported hf/ is loaded) or an HF Qwen2 directory.
--prompts: {prompt}, Vicuna/MT-Bench {turns}, Alpaca {instruction, input, output} or SuperNI
{instruction, instances} rows (data/readers.to_prompt); or "synthetic": 200 held-out questions
about the embedded entities, with reference answers and query types (another seed than training).

For each model, one greedy answer per prompt gives: average tokens (the policy tokenizer's),
4-gram repetition rate, relevance to the query under the relevance encoder (cosine, MiniLM
by default), the copy-the-query rate, and, where rows have reference answers, ROUGE-L
against them (the alignment tax: compare the SFT baseline with the tuned policy). --samples
nucleus samples per prompt (top-p 0.9) give Self-BLEU by query type (the row's query_type
field; "unlabelled" without one). With a baseline, --judge (a reward, see
rewards/scorers.make) gives the adjusted win rate (wins + ties/2)/all, judged in both orders.

Writes <out>/report.md (tables), answers.jsonl, and PNGs: the length histogram, relevance
by sentence position (seed 002 Fig. 3) and Self-BLEU by query type. Prompts longer than
--max_prompt_len tokens keep their last tokens; the report counts them.
"""

import collections
import json
import os
import sys

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

_POLICY = flags.DEFINE_string("policy", None, "Run directory or HF directory.", required=True)
_BASELINE = flags.DEFINE_string("baseline", "", "Run directory or HF directory to compare with.")
_PROMPTS = flags.DEFINE_string("prompts", None, "Prompt file.", required=True)
_OUT = flags.DEFINE_string("out", "eval_gen", "Report directory.")
_SAMPLES = flags.DEFINE_integer("samples", 10, "Nucleus samples per prompt for Self-BLEU (>= 2).")
_TOP_P = flags.DEFINE_float("top_p", 0.9, "Nucleus mass of the Self-BLEU samples.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Answer length limit.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", 256, "Prompt tokens kept (the last ones).")
_BATCH = flags.DEFINE_integer("batch", 16, "Prompts per generation batch.")
_JUDGE = flags.DEFINE_string("judge", "r3", "Reward judging the win rate (scorers.make spec).")
_ENCODER = flags.DEFINE_string("encoder", "", "Relevance encoder dir (default: packaged MiniLM).")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N prompts only (0: all).")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip (and count) malformed prompt rows.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_POSITIONS = 8  # Sentence positions shown in the relevance plot.


def model_dir(path: str) -> str:
  """The HF directory of a run (its hf/ export) or the path itself."""
  for d in (os.path.join(path, "hf"), path):
    if os.path.exists(os.path.join(d, "config.json")) and os.path.exists(os.path.join(d, "tokenizer.json")):
      return d
  raise FileNotFoundError(f"{path}: neither a run with an exported hf/ directory nor an HF "
                          "model directory (config.json + tokenizer.json)")


def generate(cfg, params, tok, rows, n: int, greedy: bool, seed: int):
  """(texts [P][n], token counts [P][n], truncated prompt count): answers to each row's
  prompt; a count is of the generated tokens, the stop token excluded."""
  from r3jax import chat, sampling
  stop = tuple(i for i in {tok.convert_tokens_to_ids(chat.IM_END), tok.eos_token_id} if i is not None)
  scfg = sampling.SampleConfig(max_new_tokens=_MAX_NEW.value, top_p=_TOP_P.value, greedy=greedy,
                               n=n, stop_ids=stop, pad_id=tok.pad_token_id)
  if _MAX_PROMPT.value + _MAX_NEW.value > cfg.max_position_embeddings:
    raise ValueError(f"max_prompt_len + max_new_tokens = {_MAX_PROMPT.value + _MAX_NEW.value} "
                     f"exceeds the model's context of {cfg.max_position_embeddings}")
  out, counts, truncated, bs = [], [], 0, _BATCH.value
  for i in range(0, len(rows), bs):
    chunk = rows[i:i + bs]
    ids = [chat.tokenize(tok, chat.prompt_messages(r["prompt"]), True)[0] for r in chunk]
    truncated += sum(len(x) > _MAX_PROMPT.value for x in ids)
    ids = [x[-_MAX_PROMPT.value:] for x in ids]
    ids += [ids[-1]] * (bs - len(ids))  # One batch shape: one compile.
    p_tok, p_mask = sampling.left_pad(ids, tok.pad_token_id, _MAX_PROMPT.value)
    s = sampling.generate(params, jnp.asarray(p_tok), jnp.asarray(p_mask),
                          jax.random.fold_in(jax.random.key(seed), i), model_cfg=cfg, cfg=scfg)
    texts = [t.strip() for t in sampling.decode(tok, s)]
    lens = np.asarray(s.mask_BN).sum(-1) - np.asarray(s.stopped_B)
    out += [texts[j * n:(j + 1) * n] for j in range(len(chunk))]
    counts += [list(lens[j * n:(j + 1) * n]) for j in range(len(chunk))]
  return out, counts, truncated


def model_stats(name, path, rows, encoder, reward):
  """Answers and per-answer statistics of one model."""
  from r3jax import text_metrics as tm, tokenizer as tokenizer_lib
  from r3jax.models import hf
  from r3jax.rewards import r3
  cfg, params = hf.load(model_dir(path), dropout_rate=0.0)
  tok = tokenizer_lib.load(model_dir(path))
  greedy, counts, truncated = generate(cfg, params, tok, rows, 1, True, _SEED.value)
  answers = [g[0] for g in greedy]
  samples, _, _ = generate(cfg, params, tok, rows, _SAMPLES.value, False, _SEED.value + 1)
  queries = [r["prompt"] for r in rows]
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
      "self_bleu": np.array([tm.self_bleu(x) for x in samples]),
  }
  refs = [(i, r["reference"]) for i, r in enumerate(rows) if r.get("reference")]
  s["rouge_l"] = np.array([tm.rouge_l(cut[i], ref) for i, ref in refs])
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


def _plots(out, stats, types):
  from r3jax import plot
  plt = plot.plt
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

  table = {}
  for name, s in stats.items():
    table[name] = {}
    for t in sorted(set(types)):
      v = s["self_bleu"][np.array(types) == t]
      half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
      table[name][t] = (v.mean(), v.mean() - half, v.mean() + half)
  plot.grouped_bars(os.path.join(out, "self_bleu_by_type.png"), table, "Self-BLEU",
                    "Self-BLEU by query type (95% CI)")


def report(out, rows, stats, win, types, skipped) -> str:
  names = list(stats)
  f = lambda v, fmt="{:.3f}": fmt.format(float(np.mean(v))) if len(v) else "n/a"
  lines = [f"# Generation report: {', '.join(names)}", "",
           f"{len(rows)} prompts from `{_PROMPTS.value}`; greedy answers of at most "
           f"{_MAX_NEW.value} tokens; Self-BLEU over {_SAMPLES.value} samples at top-p {_TOP_P.value}.",
           "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for label, key, fmt in (("average tokens", "tokens", "{:.1f}"), ("4-gram repetition", "rep4", "{:.3f}"),
                          ("relevance (cosine)", "relevance", "{:.3f}"),
                          ("copies the query", "copies", "{:.1%}"), ("Self-BLEU", "self_bleu", "{:.1f}"),
                          ("ROUGE-L vs reference", "rouge_l", "{:.3f}")):
    lines.append(f"| {label} | " + " | ".join(f(stats[n][key], fmt) for n in names) + " |")
  lines.append("| prompts truncated | " + " | ".join(str(stats[n]["truncated_prompts"]) for n in names) + " |")
  n_ref = len(stats[names[0]]["rouge_l"])
  lines += ["", f"ROUGE-L uses the {n_ref} prompts with a reference answer (the alignment tax "
            "when the baseline is the SFT model)." if n_ref else "No prompt has a reference answer: no ROUGE-L."]
  lines += ["", "## Self-BLEU by query type", "", "| query type | prompts | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names)]
  for t in sorted(set(types)):
    m = np.array(types) == t
    lines.append(f"| {t} | {int(m.sum())} | " + " | ".join(f"{stats[n]['self_bleu'][m].mean():.1f}" for n in names) + " |")
  if win:
    lines += ["", f"## Win rate, judged by `{_JUDGE.value}` in both orders", "",
              f"{names[0]} vs {names[1]}: **{win['win_rate']:.1%}** (wins {win['wins']}, ties "
              f"{win['ties']}, losses {win['losses']} of {win['judgements']} judgements)."]
  if skipped:
    lines += ["", f"{len(skipped)} malformed prompt rows skipped, e.g. `{skipped[0]}`."]
  lines += ["", "![length](length_hist.png) ![relevance](relevance_by_position.png) "
            "![self-bleu](self_bleu_by_type.png)", ""]
  text = "\n".join(lines)
  with open(os.path.join(out, "report.md"), "w") as fh:
    fh.write(text)
  return text


def main(argv):
  del argv
  from r3jax import text_metrics as tm
  from r3jax.data import readers
  from r3jax.models import bert
  from r3jax.rewards import r3, scorers
  if _SAMPLES.value < 2:
    sys.exit("error: --samples must be at least 2 (Self-BLEU compares samples with each other)")
  try:
    if _PROMPTS.value == "synthetic":
      from r3jax.data import synthetic
      loaded = readers.Loaded([dict(q, where=f"synthetic:{i}")
                               for i, q in enumerate(synthetic.questions(200, seed=99))], [])
    else:
      loaded = readers.load_prompts(_PROMPTS.value, _SKIP_BAD.value)
    rows = loaded.rows[:_LIMIT.value] if _LIMIT.value else loaded.rows
    types = []
    for r in rows:
      try:
        types.append(r3.query_type(r.get("query_type")) or "unlabelled")
      except ValueError as e:
        raise readers.DataError(f"{r['where']}: field 'query_type': {e}") from None
    encoder = bert.Encoder.from_dir(_ENCODER.value or bert.minilm_dir(), normalize=True)
    reward = r3.R3(encoder, max_len=_MAX_NEW.value, mode="r3")
    models = {"policy": _POLICY.value, **({"baseline": _BASELINE.value} if _BASELINE.value else {})}
    stats = {name: model_stats(name, path, rows, encoder, reward) for name, path in models.items()}
    judge = scorers.make(_JUDGE.value, max_len=_MAX_NEW.value) if _BASELINE.value else None
  except (readers.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  win = None
  if judge is not None:
    queries, refs, qts = [r["prompt"] for r in rows], [r.get("reference") for r in rows], [r.get("query_type") for r in rows]
    # A pointwise judge: score each answer set once; both orders read the same scores.
    answers = {n: stats[n]["answers"] for n in ("policy", "baseline")}
    score = {n: np.asarray(judge(queries, a, refs, qts)) for n, a in answers.items()}
    name = lambda x: "policy" if x is answers["policy"] else "baseline"
    pref = lambda p, a, b: score[name(a)] - score[name(b)]
    win = tm.win_rate(pref, queries, answers["policy"], answers["baseline"])
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "answers.jsonl"), "w") as fh:
    for i, r in enumerate(rows):
      fh.write(json.dumps({"where": r["where"], "prompt": r["prompt"],
                           **{n: s["answers"][i] for n, s in stats.items()}}) + "\n")
  _plots(_OUT.value, stats, types)
  print(report(_OUT.value, rows, stats, win, types, loaded.skipped))


if __name__ == "__main__":
  app.run(main)
