"""The cleaning stages: the Gopher rules, script fractions, MinHash near-duplicates, PII scrubbing
and host blocklists."""

import random

import numpy as np
import pytest

from gpt_jax.clean import dedup, privacy, quality
from gpt_jax.errors import UserError

PARAGRAPH = """The old harbour town wakes slowly in the winter. Fishing boats come back before dawn,
and the market opens when the first crates of cod and herring are carried up the steps. Children
walk to school along the sea wall, while their parents argue about the price of diesel and the
weather that is coming in from the west. By noon the cafes are full of people who have nothing
urgent to do, and the gulls wait on the roofs for whatever falls from the tables. In the evening
the lamps on the pier are lit one by one."""

# Made-up words, none of them a stop word, for texts of known repetition.
_RNG = random.Random(0)
WORDS = [''.join(_RNG.choice('bcdfghjklmnpqrstvwxz') for _ in range(5)) for _ in range(400)]


def _hashtags(n: int) -> str:
  return ''.join(f' #{word}' for word in WORDS[:n])


def test_gopher_passes_ordinary_prose():
  assert quality.gopher_rule_failed(PARAGRAPH) is None


@pytest.mark.parametrize('text, rule', [
    ('Too short to be a document, with only ten words in it.', 'word_count'),
    (PARAGRAPH + _hashtags(12), 'symbol_ratio'),  # 12 '#' in 111 words
    ('\n'.join(f'- {line}' for line in PARAGRAPH.splitlines()), 'bullet_lines'),
    (PARAGRAPH + '\nSubscribe to the newsletter and follow us.' * 5, 'duplicate_lines'),  # 4 of 11
    (' '.join(WORDS[:60]) + '. Dogs bark loudly.\n' + ' '.join(WORDS[60:70]) + '.', 'stop_words'),
    (PARAGRAPH + ' the harbour' * 20, 'top_2gram'),
])
def test_gopher_names_the_failed_rule(text, rule):
  assert quality.gopher_rule_failed(text) == rule


def test_gopher_symbol_ratio_is_per_word():
  assert len(PARAGRAPH.split()) == 99
  assert quality.gopher_rule_failed(PARAGRAPH + _hashtags(11)) is None  # 11 in 110 words: 0.1


def _repeated_block() -> str:
  """60 distinct words, then the first 10 again: the repeated 5- to 10-grams cover those 10 words,
  50 of the 347 word characters (0.144)."""
  words = WORDS[:28] + ['the'] + WORDS[28:58] + ['and.']
  return ' '.join(words) + '\n' + ' '.join(words[:10])


def test_gopher_duplicate_ngrams_count_word_characters():
  assert len(''.join(_repeated_block().split())) == 347
  # Over the 6-gram bound (0.14), under the 5-gram one (0.15).
  assert quality.gopher_rule_failed(_repeated_block()) == 'duplicate_6gram'


def test_gopher_ngram_bounds_are_exact(monkeypatch):
  bounds = dict.fromkeys(quality.MAX_DUPLICATE_NGRAM_CHARS, 1.0)
  monkeypatch.setattr(quality, 'MAX_DUPLICATE_NGRAM_CHARS', bounds)
  for bound, expected in ((50 / 347 - 1e-9, 'duplicate_5gram'), (50 / 347 + 1e-9, None)):
    bounds[5] = bound
    assert quality.gopher_rule_failed(_repeated_block()) == expected


def test_gopher_punctuated_lines():
  menu = '\n'.join(' '.join(WORDS[i:i + 5] + ['the', 'of']) for i in range(0, 140, 7))
  assert quality.gopher_rule_failed(menu) == 'punctuated_lines'
  assert quality.gopher_rule_failed(menu + '.') is None  # 1 line in 20 ends with a period


@pytest.mark.parametrize('text, script, fraction', [
    ('Hello, world!', 'latin', 1.0),
    ('Hello мир', 'latin', 5 / 8),
    ('Hello мир', 'cyrillic', 3 / 8),
    ('ひらがなとカタカナと漢字', 'japanese', 1.0),
    ('ひらがなとカタカナと漢字', 'han', 2 / 12),
    ('한국어 text', 'korean', 3 / 7),
    ('ＦＵＬＬ width', 'latin', 1.0),
    ('1234 !?', 'latin', 0.0),
])
def test_script_fraction(text, script, fraction):
  assert quality.script_fraction(text, script) == pytest.approx(fraction)


def test_script_fraction_unknown_script():
  with pytest.raises(UserError, match=r'--config.data.script.*latin, cyrillic'):
    quality.script_fraction('text', 'klingon')


def _document(seed: int, num_words: int = 300) -> list[str]:
  return random.Random(seed).choices(WORDS, k=num_words)


def _shingles(words: list[str]) -> set[str]:
  return {' '.join(words[i:i + 5]) for i in range(len(words) - 4)}


def test_minhash_signature_golden():
  signature = dedup.minhash_signature('The quick brown fox jumps over the lazy dog', ngram=5,
                                      num_perm=128)
  assert signature.dtype == np.uint64 and signature.shape == (128,)
  assert signature[:3].tolist() == [1454906593, 509147050, 1097190569]
  # Lower-cased words split on whitespace: spacing and case do not change the shingles.
  again = dedup.minhash_signature('the QUICK brown  fox\njumps over the lazy dog', ngram=5,
                                  num_perm=128)
  np.testing.assert_array_equal(signature, again)


def test_minhash_estimates_jaccard():
  words = _document(1)
  edited = list(words)
  for i in range(5, 300, 33):  # 9 words (3%) changed, far apart: 45 of 296 shingles change
    edited[i] = 'zzzzz'
  exact = len(_shingles(words) & _shingles(edited)) / len(_shingles(words) | _shingles(edited))
  assert exact == pytest.approx(251 / 341)
  a, b = (dedup.minhash_signature(' '.join(w), ngram=5, num_perm=128) for w in (words, edited))
  assert abs(np.mean(a == b) - exact) < 0.1  # the estimate's standard error is 0.04


def test_near_duplicates():
  words = _document(1)
  edited = words[:100] + ['zzzzz'] * 9 + words[109:]  # 3% of the words, one edit
  signature = lambda w: dedup.minhash_signature(' '.join(w), ngram=5, num_perm=128)
  index = dedup.NearDuplicates(threshold=0.8, num_perm=128)
  assert not index.seen('a', signature(words))
  assert index.seen('b', signature(edited))
  assert not index.seen('c', signature(_document(2)))
  assert len(index) == 2
  exact = dedup.NearDuplicates(threshold=1.0, num_perm=128)
  assert not exact.seen('a', signature(words))
  assert not exact.seen('b', signature(edited))
  assert exact.seen('c', signature(words))


@pytest.mark.parametrize('threshold', [0, 1.5])
def test_near_duplicates_threshold_range(threshold):
  with pytest.raises(UserError, match='--config.data.near_dedup_threshold'):
    dedup.NearDuplicates(threshold=threshold, num_perm=128)


def test_document_digest():
  assert dedup.document_digest('abc').hex() == 'ba7816bf8f01cfea414140de5dae2223'
  assert len(dedup.document_digest('')) == 16


def test_scrub_pii_replaces_identifiers():
  text = ('Write to jane.doe+news@mail.example.co.uk or call (555) 123-4567, 555-123-4567, '
          '+44 20 7946 0958 or 03-1234-5678. Server 81.2.69.160:8080 and 2001:4860:4860::8888. '
          'Card 4111 1111 1111 1111, Amex 378282246310005.')
  scrubbed, counts = privacy.scrub_pii(text)
  assert scrubbed == ('Write to <EMAIL> or call <PHONE>, <PHONE>, <PHONE> or <PHONE>. '
                      'Server <IP_ADDRESS>:8080 and <IP_ADDRESS>. Card <CARD>, Amex <CARD>.')
  assert counts == {'email': 1, 'phone': 4, 'ip_address': 2, 'card': 2}


def test_scrub_pii_leaves_ordinary_text():
  text = ('In 1623, Act 3, Scene 2: 12,000 men paid 3.14 each; version 1.2.3 shipped on '
          '2024-01-15 at 12:30:45. Order 4111 1111 1111 1112 fails the Luhn check; write to '
          'user at example dot com; the router is 192.168.1.1 and std::vector is C++.')
  assert privacy.scrub_pii(text) == (text, {})


# Dotted quads that are public IPv4 addresses by shape, but version or section numbers by the
# words around them; then addresses with words about versions or sections nearby.
VERSION_NUMBERS = [
    'Upgrade the driver to version 1.2.3.4 before Friday.',
    'See section 4.1.2.3 for the details.',
    'Version: 2.0.0.1 (stable)',
    'The firmware version number is 1.0.0.12.',
    'Flash firmware 1.0.0.12, then reboot.',
    'version 10.0.0.1 of the firmware',
    'Ver. 4.2.0.1 and v1.2.3.4 shipped together.',
    'RFC 9110, Section 4.1.2.3, defines it; so does § 2.3.4.5 and §2.3.4.6.',
    'Ubuntu runs Linux kernel 5.4.0.42-generic.',
    'Tested with versions 1.2.3.4, 1.2.3.5 and 1.2.3.6.',
    'Upgrade from version 3.1.0.4 to 3.1.0.5 or "3.1.0.6".',
    'Sections 4.1.2.3-4.1.2.5 and clause 5.1.2.3 apply.',
    'The 1.0.0.12 firmware and the 2.1.0.4 release fix it.',
    'Windows release 10.0.19041.1, build 6.1.7601.17514.',
]
ADDRESSES = [
    'connect to 8.8.8.8 first',
    'the server at 93.184.216.34 responded',
    'from IP 1.2.3.4 we saw',
    'host 81.2.69.160:8080',
    'benchmarks of 1.1.1.1 vs 8.8.8.8',  # 2
    'Section 3: 8.8.8.8 is the resolver.',
    'nginx version 1.18 listens on 93.184.216.34.',
    'The release server is at 8.8.4.4, kernel logs at 81.2.69.160.',  # 2
]


def test_scrub_pii_keeps_version_and_section_numbers():
  assert [privacy.scrub_pii(text) for text in VERSION_NUMBERS] == [
      (text, {}) for text in VERSION_NUMBERS]
  scrubbed = [privacy.scrub_pii(text) for text in ADDRESSES]
  assert [counts for _, counts in scrubbed] == [{'ip_address': n} for n in (1, 1, 1, 1, 2, 1, 1, 2)]
  assert scrubbed[6][0] == 'nginx version 1.18 listens on <IP_ADDRESS>.'


def test_host_blocked():
  blocked = frozenset({'example.com'})
  assert privacy.host_blocked(privacy.url_host('https://A.b.Example.com:8080/x'), blocked)
  assert privacy.host_blocked('example.com', blocked)
  assert not privacy.host_blocked('ample.com', blocked)
  assert not privacy.host_blocked('example.com.au', blocked)
  assert privacy.host_blocked('example.com', frozenset({'www.example.com'}))
  assert not privacy.host_blocked('mail.example.com', frozenset({'www.example.com'}))


@pytest.mark.parametrize('url, host', [
    ('spam.example/p1', 'spam.example'),
    ('www.spam.example:8080/', 'www.spam.example'),
    ('//spam.example/x', 'spam.example'),
    ('SPAM.example', 'spam.example'),
    ('user@spam.example/x', 'spam.example'),
    ('spam.example.', 'spam.example'),
    (' spam.example?q=1#top', 'spam.example'),
    ('https://spam.example:443/', 'spam.example'),
    ('HTTP://user:pw@WWW.Spam.Example.:80#top', 'www.spam.example'),
    ('localhost:8080', 'localhost'),
    ('http://[2001:DB8::1]:8080/x', '2001:db8::1'),
    ('[2001:db8::1]/x', '2001:db8::1'),
    ('not a url', ''),
    ('/a/path', ''),
    ('mailto:ann@spam.example', ''),
    ('http://[::1', ''),
])
def test_url_host_with_or_without_scheme_port_and_user(url, host):
  assert privacy.url_host(url) == host


def test_documents_of_a_blocked_host_are_removed_whatever_the_url_shape():
  from gpt_jax import clean
  from gpt_jax.corpus import Document
  settings = clean.Settings(blocked_hosts=privacy.read_blocklist('spam.example'))
  urls = ['spam.example/p1', 'www.spam.example:8080/', 'https://SPAM.example./', 'ham.example/p1']
  assert [clean.inspect(Document('d', PARAGRAPH, url), settings).removed_by for url in urls] == [
      'blocked_host', 'blocked_host', 'blocked_host', '']


def test_read_blocklist(tmp_path):
  path = tmp_path / 'hosts.txt'
  path.write_text('# adult sites\nExample.com\n\n*.foo.org  # and below\n0.0.0.0 bar.net\n')
  assert privacy.read_blocklist(str(path)) == {'example.com', 'foo.org', 'bar.net'}
  path.write_text('\ufeffa.org\n\ufeffb.org\n\ufeff\ufeff0.0.0.0 c.org\n')  # 3 files, joined
  assert privacy.read_blocklist(str(path)) == {'a.org', 'b.org', 'c.org'}
  assert privacy.read_blocklist(' .Example.com, baz.io ,') == {'example.com', 'baz.io'}
  assert privacy.read_blocklist('') == frozenset()
  with pytest.raises(UserError, match='--config.data.blocked_hosts'):
    privacy.read_blocklist(str(tmp_path / 'missing.txt'))


def test_clean_documents_runs_every_stage_in_order_and_counts_each():
  from gpt_jax import clean
  from gpt_jax.corpus import Document
  long = PARAGRAPH.replace('\n', ' ')
  near = long.replace('winter', 'summer')
  docs = [
      Document('a', 'Plain words, long enough.'),  # 25 chars, 20 letters of 22 visible: 0.91
      Document('b', 'short'),  # too short
      Document('c', '1234567890 12345 abcde fgh'),  # 26 chars, 8 letters of 23 visible: 0.35
      Document('d', 'Plain words, long enough.'),  # an exact duplicate of a
      Document('e', long + ' Write to ann@harbour.org.', 'https://news.example.com/1'),
      Document('f', near, 'https://www.spam.test/x'),  # blocked host
      Document('g', near),  # a near-duplicate of e
      Document('h', 'Слова на другом языке, длинные'),  # another script
  ]
  settings = clean.Settings(min_chars=20, min_letter_fraction=0.6, script='latin',
                            min_script_fraction=0.5, blocked_hosts=frozenset({'spam.test'}),
                            near_dedup=True, near_dedup_threshold=0.7, scrub_pii=True)
  kept, report = clean.clean_documents(docs, settings)
  assert [(d.source, d.text) for d in kept] == [
      ('a', 'Plain words, long enough.'), ('e', long + ' Write to <EMAIL>.')]
  assert {stage: n for stage, (n, _) in report.removed.items()} == {
      'quality': 2, 'script': 1, 'blocked_host': 1, 'exact_dedup': 1, 'near_dedup': 1}
  assert report.removed['quality'][1] == 5 + 26 and report.pii == {'email': 1}
  assert (report.documents, report.kept_documents) == (8, 2)
  assert report.summary(settings).startswith(
      'cleaning kept 2 of 8 documents (') and 'gopher' not in report.summary(settings)
  assert report.summary(settings).endswith('; PII replaced: 1 email')
  json = report.to_json()
  assert json['removed']['near_dedup'] == {'documents': 1, 'chars': len(near)}


def test_cleaning_that_leaves_nothing_names_the_stage():
  from gpt_jax import clean
  from gpt_jax.corpus import Document
  docs = [Document('a', 'tiny'), Document('b', 'words ' * 40), Document('c', 'words ' * 40)]
  with pytest.raises(UserError, match=r'^the corpus: cleaning removed every one of its 3 documents '
                     r'\(quality 3\); pass other text, or relax quality with '
                     r'--config.data.min_chars or --config.data.min_letter_fraction$'):
    clean.clean_documents(docs, clean.Settings(min_chars=1000))
  with pytest.raises(UserError, match=r'\(quality 1, gopher 2\); .* relax gopher with '
                     r'--config.data.gopher_rules=False$'):
    clean.clean_documents(docs, clean.Settings(min_chars=10, gopher_rules=True))
