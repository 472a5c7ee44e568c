"""SynRel-style relevance comparisons (Kim & Seo 2024, R³ paper, §2.1 and Table 1).

Each item asks "Please tell me about {entity}."; the chosen response states that entity's
facts, and the rejected one is an equally fluent description of a different entity. A reward
that captures query-response relevance should get close to all of them right.

Entities come from a JSONL file of {"entity": name, "facts": [sentence, ...]} rows, or from
the embedded synthetic knowledge base (data/synthetic.py), 530 entities as in the paper.
"""

import random

from r3jax.data import readers, synthetic

QUERY = "Please tell me about {entity}."


def _entity(obj, where) -> dict:
  if not isinstance(obj, dict):
    raise readers.DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  name = readers.field(obj, "entity", where)
  facts = readers.field(obj, "facts", where, list)
  if not name.strip():
    raise readers.DataError(f"{where}: empty field 'entity'")
  if not facts or not all(isinstance(f, str) and f.strip() for f in facts):
    raise readers.DataError(f"{where}: field 'facts' should be a non-empty list of sentences")
  return {"entity": name, "facts": facts}


def load_entities(path: str) -> list[dict]:
  rows = readers.load_rows(path, _entity, False, "entities").rows
  if len(rows) < 2:
    raise readers.DataError(f"{path}: SynRel needs at least 2 entities, got {len(rows)}")
  return rows


def embedded_entities(n: int = 530, seed: int = 0) -> list[dict]:
  return [{"entity": e["name"], "facts": synthetic.facts(e), "where": f"synthetic:{i}"}
          for i, e in enumerate(synthetic.entities(n, seed))]


def triplets(entities: list[dict] | None = None, seed: int = 0) -> list[dict]:
  """One comparison per entity: {prompt, responses: [relevant, irrelevant], query_type}."""
  ents = entities if entities is not None else embedded_entities()
  rng = random.Random(seed)
  out = []
  for i, e in enumerate(ents):
    j = rng.randrange(len(ents) - 1)
    other = ents[j + (j >= i)]  # Any entity but this one.
    out.append({"prompt": [{"role": "user", "content": QUERY.format(entity=e["entity"])}],
                "responses": [" ".join(e["facts"]), " ".join(other["facts"])],
                "query_type": "open_ended", "where": e.get("where", f"entity {i}")})
  return out
