"""The embedded default's data: Q/A conversations about a small world of made-up entities.

The world is WORLD_SIZE entities (`world()`), each with six facts: kind, size, place, what
it is known for, colour and the year it was first recorded. SFT, PPO and eval_gen all ask
about these same entities, so the policy can know what it is asked (it learnt the facts in
SFT) and the gold judge (eval/gold.py) can check every statement it makes.

Closed-ended questions ask for one fact; their answers state it. Open-ended ones ask for
a description; their SFT answers state the first sentence (kind, size, place) and a random
0-3 of the other three sentences, mostly 0-1 (OPEN_EXTRA_WEIGHTS), so a complete
answer (all six facts) is rare in SFT and there is room for RL to improve recall.

Everything is generated from a seed, so the tiny configs need no files and no downloads.
Each example has a conversation, the raw question, a reference answer, a query type, the
entity it is about and the attribute it asks for ("all" for open-ended questions).
"""

import functools
import random

_SYLLABLES = ["ka", "lo", "mi", "ren", "ta", "vo", "shi", "dor", "el", "ban", "qu", "zar",
              "fen", "ori", "pal", "sun", "tir", "wen", "ya", "gro", "bel", "ni", "cas", "mor"]

_KINDS = {
    "city": dict(place=["a river valley", "the northern coast", "a high plateau",
                        "the edge of a desert", "a chain of islands", "a forested hill"],
                 known=["its stone bridges", "a yearly lantern festival", "glass making",
                        "its spice markets", "a famous clock tower", "wide public gardens"],
                 size=["small", "large", "busy", "quiet", "ancient", "modern"]),
    "animal": dict(place=["cold mountain lakes", "tropical forests", "dry grasslands",
                          "deep caves", "coral reefs", "snowy tundra"],
                   known=["its loud evening song", "changing color in winter",
                          "building nests from clay", "swimming very fast",
                          "living in large herds", "a long curled tail"],
                   size=["tiny", "small", "medium-sized", "large", "slender", "heavy"]),
    "instrument": dict(place=["village weddings", "temple music", "street bands",
                              "royal courts", "harvest dances", "night markets"],
                       known=["a bright ringing tone", "seven bronze strings",
                              "a deep humming sound", "being played with two bows",
                              "a carved wooden body", "a tone like falling rain"],
                       size=["small", "large", "light", "heavy", "long", "round"]),
    "plant": dict(place=["wet meadows", "rocky cliffs", "river banks", "old orchards",
                         "shaded gardens", "sandy shores"],
                  known=["flowers that open at night", "a sweet blue fruit",
                         "leaves used for tea", "seeds that float on water",
                         "a strong lemon smell", "bark used for rope"],
                  size=["short", "tall", "climbing", "spreading", "slow-growing", "hardy"]),
}
_COLORS = ["red", "blue", "green", "golden", "silver", "purple", "orange", "white", "gray"]
KINDS = tuple(sorted(_KINDS))
COLORS = tuple(_COLORS)
_SYSTEMS = [None, None, "You are a helpful assistant.",
            "You are a concise and accurate assistant."]


WORLD_SIZE = 60  # Small enough for the tiny model to learn every entity's facts in SFT.
OPEN_EXTRA_WEIGHTS = (0.35, 0.35, 0.2, 0.1)  # P(0..3 sentences after the first) in SFT answers.


def _name(rng: random.Random) -> str:
  return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def entities(n: int, seed: int = 0) -> list[dict]:
  """n made-up entities with a kind, a color, a place, a size, a year and a feature."""
  rng = random.Random(seed)
  seen, out = set(), []
  while len(out) < n:
    name = _name(rng)
    if name in seen:
      continue
    seen.add(name)
    kind = rng.choice(sorted(_KINDS))
    k = _KINDS[kind]
    out.append(dict(name=name, kind=kind, color=rng.choice(_COLORS),
                    place=rng.choice(k["place"]), known=rng.choice(k["known"]),
                    size=rng.choice(k["size"]), year=rng.randint(1200, 1990)))
  return out


def facts(e: dict) -> list[str]:
  """Fluent sentences stating an entity's properties (also used for SynRel-style sets)."""
  where = {"city": "lies in", "animal": "lives in", "instrument": "is played at",
           "plant": "grows in"}[e["kind"]]
  return [f"{e['name']} is a {e['size']} {e['kind']} that {where} {e['place']}.",
          f"It is best known for {e['known']}.",
          f"Its main color is {e['color']}.",
          f"It was first recorded in the year {e['year']}."]


@functools.cache
def world(n: int = WORLD_SIZE) -> dict[str, dict]:
  """The embedded world's knowledge base: entity name -> its facts. Cached (the gold judge
  reads it for every batch), so callers must not change it."""
  return {e["name"]: e for e in entities(n, seed=0)}


_OPEN = ["Please tell me about {n}.", "What can you tell me about {n}?", "Describe {n}.",
         "Give me an overview of {n}.", "I would like to learn about {n}. Can you explain?"]
_CLOSED = [  # (question, answer, the attribute asked for)
    ("What color is {n}?", lambda e: f"{e['name']} is {e['color']}.", "color"),
    ("What is {n} known for?", lambda e: f"{e['name']} is known for {e['known']}.", "known"),
    ("In which year was {n} first recorded?",
     lambda e: f"{e['name']} was first recorded in {e['year']}.", "year"),
    ("What kind of thing is {n}?", lambda e: f"{e['name']} is a {e['size']} {e['kind']}.", "kind"),
    ("Where would I find {n}?",
     lambda e: f"You would find {e['name']} in {e['place']}.", "place"),
]


def generate(n: int, seed: int = 0, num_entities: int = WORLD_SIZE,
             restate: float = 0.0) -> list[dict]:
  """n examples about the world's entities: {messages, prompt, reference, query_type,
  entity, asks}. `seed` draws the questions; the entities are always world(num_entities).

  With probability `restate` an answer opens by repeating the question, as many real
  assistants' answers do. That gives the policy the behaviour relevance-only PPO can
  reinforce into pure copying (R³ paper, Kim & Seo 2024, §2.2); the default set has none.
  """
  rng = random.Random(seed + 1)
  ents = list(world(num_entities).values())
  out = []
  for _ in range(n):
    e = rng.choice(ents)
    if rng.random() < 0.5:
      question = rng.choice(_OPEN).format(n=e["name"])
      sents = facts(e)
      extra = rng.choices(range(4), OPEN_EXTRA_WEIGHTS)[0]
      answer = " ".join([sents[0]] + rng.sample(sents[1:], extra))
      qtype, asks = "open_ended", "all"
    else:
      template, make, asks = rng.choice(_CLOSED)
      question, answer, qtype = template.format(n=e["name"]), make(e), "closed_ended"
    reference = answer
    if restate and rng.random() < restate:  # No extra draw at 0: the default set is unchanged.
      answer = f"{question} {answer}"
    system = rng.choice(_SYSTEMS)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    out.append(dict(messages=messages, prompt=question, reference=reference,
                    query_type=qtype, entity=e["name"], asks=asks))
  return out


def questions(n: int, seed: int) -> list[dict]:
  """n {prompt, reference, query_type, entity, asks} rows about the world's entities: what
  PPO and eval_gen ask (another seed than SFT's: other draws of the same questions)."""
  return [{k: ex[k] for k in ("prompt", "reference", "query_type", "entity", "asks")}
          for ex in generate(n, seed)]


def comparisons(n: int, seed: int = 0, num_entities: int | None = None,
                world_only: bool = False) -> list[dict]:
  """n comparisons {prompt, responses: [chosen, rejected], reference, query_type}.

  The chosen response is the reference answer. The rejected one is the same kind of
  answer about another entity; half the time it keeps the asked entity's name, so it is
  fluent and on-topic but states the wrong facts (a reward must know, not just match).
  With world_only the entities are the world's (as SFT taught them) and each row also
  carries the entity and what it asks, for the gold judge: RSO's and best-of-N's prompts.
  """
  rng = random.Random(seed + 2)
  ents = (list(world().values()) if world_only
          else entities(num_entities or max(50, n // 6), seed))
  out = []
  while len(out) < n:
    e, other = rng.sample(ents, 2)
    if rng.random() < 0.5:
      question = rng.choice(_OPEN).format(n=e["name"])
      k = rng.randint(1, 3)
      pick = lambda x: " ".join([facts(x)[0]] + [facts(x)[i] for i in sorted(rng.sample(range(1, 4), k))])
      chosen, rejected, qtype, asks = pick(e), pick(other), "open_ended", "all"
    else:
      template, make, asks = rng.choice(_CLOSED)
      question, chosen, rejected, qtype = template.format(n=e["name"]), make(e), make(other), "closed_ended"
    if rng.random() < 0.5:
      rejected = rejected.replace(other["name"], e["name"])
    if rejected == chosen:  # Two entities can share a property; that is not a comparison.
      continue
    row = {"prompt": [{"role": "user", "content": question}], "responses": [chosen, rejected],
           "reference": chosen, "query_type": qtype}
    out.append(dict(row, entity=e["name"], asks=asks) if world_only else row)
  return out
