"""A seeded world of invented people, for measuring retrieval-augmented generation where no model can know the answer.

Each person has a name made of invented syllables and four facts (home town, birth year, trade, the guild they
founded). Their biography is written in one of several paraphrases; near-namesakes (the same family name with
another given name, or the same given name with a family name one letter away) get biographies of their own with
other facts, as distractors. Questions ask one fact in templates that no biography uses, half of them kept for
evaluation only, and have one exact answer:

>>> world = make_world(seed=0, people=4)
>>> question = world.questions[0]
>>> question.answer in world.document(question.document).text
True
>>> len({q.template for q in world.questions if q.split == "train"} &
...     {q.template for q in world.questions if q.split == "test"})
0
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from combinax.retrieval.documents import Document

ONSETS = ["b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st", "t", "th",
          "v", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "m", "x"]
TRADES = ["clockmaker", "glassblower", "cartographer", "beekeeper", "luthier", "astronomer", "bookbinder",
          "shipwright", "herbalist", "stonemason", "weaver", "perfumer"]
GUILDS = ["Lantern", "Compass", "Anvil", "Willow", "Harbor", "Quill", "Ember", "Thistle", "Falcon", "Meadow"]
GUILD_KINDS = ["Guild", "Society", "Circle", "Fellowship", "Order"]

# The biographies: each person's is one of these, chosen by the seed.
BIOGRAPHIES = [
    "{name} was born in {town} in {year}. A {trade} by training, {name} later founded the {guild}.",
    "Born in {year} in the town of {town}, {name} worked as a {trade} and went on to found the {guild}.",
    "The {guild} was founded by {name}, a {trade} from {town} who was born in {year}.",
    "{name} ({year}) grew up in {town}. Known as a {trade}, {name} is remembered as the founder of the {guild}.",
]
# The questions, by the fact they ask: the "train" templates may be learned (a RAG fine-tuning set), the "test"
# ones are only ever asked in evaluation. No biography is written in a question's words, so a question finds its
# biography by its meaning and the name, not by matching a sentence.
QUESTIONS = {
    "town": {"train": ["In which town was {name} born?", "What is the home town of {name}?"],
             "test": ["Where does {name} come from?"]},
    "year": {"train": ["In what year was {name} born?", "What is the birth year of {name}?"],
             "test": ["When was {name} born?"]},
    "trade": {"train": ["What was the trade of {name}?", "What did {name} work as?"],
              "test": ["What was {name}'s profession?"]},
    "guild": {"train": ["Which organisation did {name} found?", "What did {name} establish?"],
              "test": ["{name} was the founder of what?"]},
}


class Person(NamedTuple):
  name: str
  town: str
  year: str
  trade: str
  guild: str


class Question(NamedTuple):
  question: str
  answer: str
  fact: str          # town, year, trade or guild
  document: str      # the id of the biography that holds the answer
  template: str
  split: str         # "train" (its template may be learned) or "test" (held-out template, held-out people)


class World(NamedTuple):
  people: list[Person]
  documents: list[Document]     # the biographies: every person's, the near-namesakes' among them
  questions: list[Question]

  def document(self, id: str) -> Document:
    return next(d for d in self.documents if d.id == id)


def _word(rng: random.Random, syllables: int) -> str:
  return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def _one_letter_away(rng: random.Random, word: str) -> str:
  while True:
    i = rng.randrange(1, len(word))
    changed = word[:i] + rng.choice("aeiourlnst") + word[i + 1:]
    if changed != word:
      return changed


def make_world(seed: int = 0, people: int = 1000, *, namesakes: int = 2, test_fraction: float = 0.2) -> World:
  """`people` invented people with `namesakes` near-namesakes each (distractors, asked about too), their
  biographies as documents, and one question per person and fact: a train-template question for the first
  `1 - test_fraction` of the people, a held-out-template question for the rest."""
  rng = random.Random(seed)
  towns = sorted({_word(rng, 2) + rng.choice(["ford", "ham", "wick", "mere", "holt"]) for _ in range(4 * people)})
  everyone, names = [], set()

  def person(name: str) -> Person:
    names.add(name)
    guild = f"{rng.choice(GUILDS)} {rng.choice(GUILD_KINDS)} of {_word(rng, 2)}"
    return Person(name, rng.choice(towns), str(rng.randrange(1700, 1950)), rng.choice(TRADES), guild)

  groups = []
  while len(groups) < people:
    given, family = _word(rng, 2), _word(rng, 3)
    if f"{given} {family}" in names:
      continue
    group = [person(f"{given} {family}")]
    for k in range(namesakes):   # the same family and another given name, or the same given name, one letter off
      other = f"{_word(rng, 2)} {family}" if k % 2 == 0 else f"{given} {_one_letter_away(rng, family)}"
      if other not in names:
        group.append(person(other))
    groups.append(group)
  documents, questions = [], []
  train_people = round(people * (1 - test_fraction))
  for g, group in enumerate(groups):
    split = "train" if g < train_people else "test"
    for p in group:
      doc_id = f"bio:{p.name}"
      documents.append(Document(doc_id, rng.choice(BIOGRAPHIES).format(**p._asdict()), f"make_world(seed={seed})"))
      everyone.append(p)
      for fact, templates in QUESTIONS.items():
        template = rng.choice(templates[split])
        questions.append(Question(template.format(name=p.name), getattr(p, fact), fact, doc_id, template, split))
  order = list(range(len(documents)))
  rng.shuffle(order)   # near-namesakes not side by side in the knowledge base
  return World(everyone, [documents[i] for i in order], questions)


def normalize(answer: str) -> str:
  """An answer as exact match compares it: lower case, no punctuation or articles, single spaces."""
  words = re.sub(r"[^\w\s]", " ", answer.lower()).split()
  return " ".join(w for w in words if w not in ("a", "an", "the"))


def exact_match(prediction: str, answer: str) -> bool:
  """True when the prediction, normalised, is the answer, or starts with it followed by a word break (a model
  that answers "Zorvik, in 1843" for "Zorvik" is right; "Zorvikham" is not)."""
  prediction, answer = normalize(prediction), normalize(answer)
  return prediction == answer or prediction.startswith(answer + " ")


def paraphrased_corpus(world: World, *, paraphrases: int = 3, seed: int = 0) -> dict[str, list[Document]]:
  """Each person's facts in `paraphrases` biographies of distinct templates, for a retrieval-augmented LM (RETRO):
  "train" holds every biography of the people whose questions are "train"; "test" the last biography of each other
  person; "knowledge_base" everything but "test". A held-out biography's facts are thus only in the knowledge base
  (in other words), never in the training text: a model can predict them only by reading its neighbours.

  >>> corpus = paraphrased_corpus(make_world(seed=0, people=4), paraphrases=2)
  >>> person = corpus["test"][0].id.rsplit(":", 1)[0]
  >>> [d.id for d in corpus["knowledge_base"] if d.id.startswith(person + ":")] == [person + ":0"]
  True
  """
  if not 2 <= paraphrases <= len(BIOGRAPHIES):
    raise ValueError(f"paraphrased_corpus: paraphrases must lie in [2, {len(BIOGRAPHIES)}] (the biography "
                     f"templates), got {paraphrases}")
  rng = random.Random(seed)
  split_of = {q.document: q.split for q in world.questions}
  corpus = {"train": [], "test": [], "knowledge_base": []}
  for person in world.people:
    split = split_of[f"bio:{person.name}"]
    for j, template in enumerate(rng.sample(BIOGRAPHIES, paraphrases)):
      document = Document(f"retro:{person.name}:{j}", template.format(**person._asdict()),
                          f"paraphrased_corpus(seed={seed}) of make_world")
      held_out = split == "test" and j == paraphrases - 1
      corpus["test" if held_out else "train" if split == "train" else "knowledge_base"].append(document)
  corpus["knowledge_base"] = corpus["train"] + corpus["knowledge_base"]
  return corpus
