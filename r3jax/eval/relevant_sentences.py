"""The relevant sentence ratio, % Rel (Kim & Seo 2024, "Rethinking the Role of Proxy Rewards
in Language Model Alignment", §5.3, App. D.2 and Figure 3): an LLM judge marks each sentence
of an answer relevant or irrelevant to the question; an answer's ratio is its relevant
sentences over its judged sentences, % Rel is the mean of that ratio over answers, and the
share of relevant k-th sentences by position k is the paper's Figure 3.

Sentences are text_metrics.sentences' split, numbered in the judge's prompt so that each
label is read by its number: the paper has GPT-4 quote each sentence first, which a small
judge does unreliably. Two modes, as the pairwise judge has:
- "generate" (the paper's): one prompt per answer; the judge writes a line
  "Sentence k: Relevant|Irrelevant" per sentence. A sentence without a label is counted
  as unreadable and left out of its answer's ratio, never guessed.
- "prob": one prompt per sentence; the label is the likelier of the first tokens of
  "Relevant" and "Irrelevant" as the judge's next token. Every label is read.
The prompts are this project's wording of the paper's.
"""

import re

import numpy as np

from r3jax.core import plots
from r3jax.eval import text_metrics as tm

SYSTEM = ("You check whether each sentence of an assistant's answer is relevant to the user's "
          "question.")
PROMPT = ("[Question]\n{question}\n\n[The Start of the Assistant's Answer]\n{numbered}\n"
          "[The End of the Assistant's Answer]\n\nCheck the answer sentence by sentence. A "
          "sentence is Irrelevant when it goes off-topic or gives information the question "
          "does not ask for; otherwise it is Relevant. ")
ASK = {"generate": "Write one line per sentence in the form \"Sentence 1: Relevant\" or "
                   "\"Sentence 1: Irrelevant\", and nothing else.",
       "prob": "Is sentence {k} relevant to the question? Reply with one word: Relevant or "
               "Irrelevant."}
LABELS = ("Relevant", "Irrelevant")
POSITIONS = 8  # Sentence positions reported and plotted.
_LABEL = re.compile(r"sentence\W{0,3}(\d+)\W{0,6}(relevant|irrelevant)", re.IGNORECASE)


def numbered(sentences: list[str]) -> str:
  return "\n".join(f"Sentence {k + 1}: {s}" for k, s in enumerate(sentences))


def parse(text: str, n: int) -> list[bool | None]:
  """Each of n sentences' label in a judgement (True: relevant); None where the judgement
  labels it nowhere. A sentence's first label counts."""
  found = {}
  for k, label in _LABEL.findall(text):
    found.setdefault(int(k), label.lower() == "relevant")
  return [found.get(k) for k in range(1, n + 1)]


def label(judge, questions: list[str], answers: list[str]) -> list[list[bool | None]]:
  """Each answer's per-sentence labels by `judge` (an llm_judge.PairwiseJudge)."""
  sents = [tm.sentences(a) for a in answers]
  out = [[] for _ in answers]
  if judge.mode == "prob":
    owners, prompts = [], []
    for i, (q, s) in enumerate(zip(questions, sents)):
      for k in range(len(s)):
        owners.append(i)
        prompts.append(PROMPT.format(question=q, numbered=numbered(s)) + ASK["prob"].format(k=k + 1))
    logp = judge.option_logprobs(judge.chat_ids(prompts, SYSTEM), LABELS) if prompts else np.zeros((0, 2))
    for i, lp in zip(owners, logp):
      out[i].append(bool(lp[0] >= lp[1]))
    return out
  todo = [i for i, s in enumerate(sents) if s]  # An empty answer has nothing to judge.
  texts = judge.judgements(judge.chat_ids(
      [PROMPT.format(question=questions[i], numbered=numbered(sents[i])) + ASK["generate"]
       for i in todo], SYSTEM)) if todo else []
  for i, text in zip(todo, texts):
    out[i] = parse(text, len(sents[i]))
  return out


def summary(labels: list[list[bool | None]]) -> dict:
  """% Rel: the mean over answers of relevant / judged sentences, with its 95% interval;
  by position k (1-based), the share of relevant k-th sentences; the counts of answers
  without sentences and of unreadable labels."""
  ratios = [np.mean([x for x in ls if x is not None]) for ls in labels
            if any(x is not None for x in ls)]
  mean, lo, hi = tm.mean_ci(ratios)
  by_position = {}
  for k in range(POSITIONS):
    read = [float(ls[k]) for ls in labels if len(ls) > k and ls[k] is not None]
    if read:
      by_position[k + 1] = (*tm.mean_ci(read), len(read))
  return {"rel": mean, "ci95": (lo, hi), "answers": len(ratios),
          "sentences": sum(len(ls) for ls in labels), "empty": sum(not ls for ls in labels),
          "unreadable": sum(x is None for ls in labels for x in ls), "by_position": by_position}


def lines(summaries: dict, judge_name: str) -> list[str]:
  """Markdown: % Rel per model, and the share of relevant sentences by position."""
  names = list(summaries)
  out = ["", f"## Relevant sentence ratio (% Rel), each sentence judged by `{judge_name}`", "",
         "| model | % Rel [95% CI] | answers | sentences | unreadable labels | empty answers |",
         "|---|---|---|---|---|---|"]
  for n, s in summaries.items():
    out.append(f"| {n} | {s['rel']:.1%} [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}] | {s['answers']} | "
               f"{s['sentences']} | {s['unreadable']} | {s['empty']} |")
  out += ["", "Share of relevant k-th sentences (sentences judged at k):", "",
          "| sentence | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for k in range(1, POSITIONS + 1):
    cell = lambda s: f"{s['by_position'][k][0]:.1%} ({s['by_position'][k][3]})" if k in s["by_position"] else "-"
    out.append(f"| {k} | " + " | ".join(cell(summaries[n]) for n in names) + " |")
  return out


def plot(path: str, summaries: dict) -> str:
  """The share of relevant sentences by position with 95% intervals (the paper's Figure 3)."""
  plt = plots.plt
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for name, s in summaries.items():
    ks = sorted(s["by_position"])
    mean = np.array([s["by_position"][k][0] for k in ks])
    ax.errorbar(ks, mean, yerr=[mean - [s["by_position"][k][1] for k in ks],
                                [s["by_position"][k][2] for k in ks] - mean],
                marker="o", capsize=3, label=name)
  ax.set_xticks(range(1, POSITIONS + 1))
  ax.set_ylim(0, 1.05)
  ax.set_xlabel("sentence position in the answer")
  ax.set_ylabel("share judged relevant")
  ax.set_title("% Rel by sentence position (95% CI)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
