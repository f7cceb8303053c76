"""The preference demo's judge: golden syllable counts of its heuristic, and its preference."""

import pytest

from gpt_jax.tasks import judge


@pytest.mark.parametrize('word, count', [
    ('the', 1), ('be', 1), ('time', 1), ('fire', 1), ('whole', 1), ('thee', 1), ('day', 1),
    ('table', 2), ('little', 2), ('able', 2), ('agree', 2), ('compare', 2), ('question', 2),
    ("summer's", 2), ("o'er", 1), ("heav'n", 1), ('beautiful', 3), ('rhythm', 1), ('Shh', 1)])
def test_word_syllables(word, count):
  assert judge.word_syllables(word) == count


@pytest.mark.parametrize('line, count', [
    ("Shall I compare thee to a summer's day?", 10),
    ('But, soft! what light through yonder window breaks?', 10),
    ('To be, or not to be, that is the question:', 11),
    ('My lord.', 2), ('', 0), ('-- 42 --', 0)])
def test_line_syllables(line, count):
  assert judge.syllables(line) == count


def test_distance_reads_the_first_line_only():
  assert judge.distance("Shall I compare thee to a summer's day?\nThou art more lovely") == 0
  assert judge.distance('To be, or not to be, that is the question:') == 1
  assert judge.distance('My lord.') == 8
  assert judge.distance('\nShall I compare thee to a summer\'s day?') == 10


def test_prefers_the_answer_nearer_ten_syllables():
  pentameter, short = "Shall I compare thee to a summer's day?", 'My lord.'
  assert judge.prefers(pentameter, short) == 1
  assert judge.prefers(short, pentameter) == -1
  assert judge.prefers(short, 'Good night.') == 0
  assert judge.prefers(' '.join(['la'] * 12), ' '.join(['la'] * 8)) == 0  # both 2 away
