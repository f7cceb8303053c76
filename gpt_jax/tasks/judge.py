"""The programmatic judge of the preference demo: of two answers, prefer the one whose first line
is closer to iambic pentameter's ten syllables.

The syllable count is an English spelling heuristic, not a pronunciation dictionary: each word
(a run of letters; apostrophes are dropped, so an elided "o'er" or "heav'n" counts as spelled)
has one syllable per group of consecutive vowels (a, e, i, o, u and y), less one for a silent
final 'e' (a lone 'e' after a consonant: "time", "fire"), except in a consonant + '-le' ending,
which is a syllable of its own ("table", "noble"), and at least one. It misjudges some words
("shakespeare" 3, "loved" 2), but the judge's preference is *defined* by this count, so a pair
chosen by it is correct by construction, and the demo's win rates measure exactly what it says.
"""

import re

TARGET_SYLLABLES = 10  # iambic pentameter: five iambs
_WORD = re.compile(r"[a-z']+")
_VOWEL_GROUP = re.compile(r'[aeiouy]+')
_VOWELS = frozenset('aeiouy')


def word_syllables(word: str) -> int:
  """The syllables of one word (letters, any case; other characters are ignored), >= 1."""
  word = re.sub(r'[^a-z]', '', word.lower())
  count = len(_VOWEL_GROUP.findall(word))
  if len(word) > 2 and word.endswith('e') and word[-2] not in _VOWELS:
    consonant_le = word.endswith('le') and word[-3] not in _VOWELS
    count -= not consonant_le
  return max(count, 1)


def syllables(text: str) -> int:
  """The syllables of a text by the heuristic of this module: the sum over its words (0 for a
  text without letters)."""
  return sum(word_syllables(w) for w in _WORD.findall(text.lower()) if w.strip("'"))


def distance(answer: str) -> int:
  """|syllables of the answer's first line − 10|: how far it is from a line of iambic
  pentameter (an answer without letters is 10 away)."""
  return abs(syllables(answer.split('\n', 1)[0]) - TARGET_SYLLABLES)


def prefers(a: str, b: str) -> int:
  """1 if the judge prefers answer a (its first line is closer to ten syllables), -1 if it
  prefers b, 0 for a tie."""
  da, db = distance(a), distance(b)
  return (da < db) - (da > db)
