"""The invented world for RAG benchmarks: the same seed makes the same world, every answer is in its biography and
nowhere a model could have read it, near-namesakes are there as distractors, held-out templates are never trained."""

from combinax.retrieval.facts import QUESTIONS, exact_match, make_world, normalize


def test_the_same_seed_makes_the_same_world_and_another_seed_another():
  assert make_world(seed=3, people=20) == make_world(seed=3, people=20)
  assert make_world(seed=3, people=20).people != make_world(seed=4, people=20).people


def test_every_answer_is_in_its_own_biography():
  world = make_world(seed=0, people=100)
  assert len(world.questions) == 4 * len(world.documents) and len(world.documents) == len(world.people)
  for q in world.questions:
    biography = world.document(q.document)
    assert normalize(q.answer) in normalize(biography.text), (q, biography.text)
    assert q.question.count(q.document.removeprefix("bio:")) == 1


def test_names_are_unique_and_most_people_have_near_namesakes_with_other_facts():
  world = make_world(seed=1, people=200, namesakes=2)
  names = [p.name for p in world.people]
  assert len(names) == len(set(names)) and len(names) > 2.9 * 200
  by_name = {p.name: p for p in world.people}
  families, givens = {}, {}
  for name in names:
    given, family = name.split(" ")
    families.setdefault(family, []).append(name)
    givens.setdefault(given, []).append(name)
  shared = [n for n in names if len(families[n.split(" ")[1]]) > 1 or len(givens[n.split(" ")[0]]) > 1]
  assert len(shared) > 0.6 * len(names)   # the first person of a group and their same-family namesake, at least
  differ = [n for n in shared for m in families[n.split(" ")[1]] if m != n and by_name[m].town != by_name[n].town]
  assert differ


def test_held_out_templates_and_people_are_never_in_the_train_split():
  world = make_world(seed=2, people=50, test_fraction=0.2)
  train = [q for q in world.questions if q.split == "train"]
  test = [q for q in world.questions if q.split == "test"]
  assert {q.template for q in test} <= {t for f in QUESTIONS.values() for t in f["test"]}
  assert not {q.template for q in train} & {q.template for q in test}
  assert not {q.document for q in train} & {q.document for q in test}
  assert 0.15 < len(test) / len(world.questions) < 0.25


def test_exact_match_ignores_case_articles_and_punctuation_but_not_a_longer_word():
  assert exact_match("the Lantern Guild of Zorvath.", "Lantern Guild of Zorvath")
  assert exact_match("Zorvik, in 1843", "Zorvik")
  assert not exact_match("Zorvikham", "Zorvik") and not exact_match("1844", "1843")
