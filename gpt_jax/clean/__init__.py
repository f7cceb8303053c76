"""Cleaning a corpus in the order of the lecture's pipeline, every stage optional and counted:
quality filters (length and letters, Gopher/C4 rules, the target script, blocked hosts), then
de-duplication (exact, then near-duplicates by MinHash LSH), then privacy reduction (PII replaced
by placeholders). Swallow's corpus shrank 3T → 1T characters by quality, → 350B by
de-duplication, → 310B by host filtering; `CleanReport` gives the same figures for a corpus here.

A document's own stages (`inspect`) need nothing but the document, so preparation runs them in
worker processes; de-duplication (`Deduplicator`) needs every earlier document, so it runs in one
process in corpus order, and what is kept does not depend on the number of workers.
"""

import dataclasses

import ml_collections
import numpy as np

from gpt_jax import corpus
from gpt_jax.clean import dedup, privacy, quality
from gpt_jax.corpus import Document
from gpt_jax.errors import UserError

# Stages that remove documents, in order, with the settings that relax each one.
STAGES = {
    'quality': '--config.data.min_chars or --config.data.min_letter_fraction',
    'gopher': '--config.data.gopher_rules=False',
    'script': '--config.data.min_script_fraction or --config.data.script',
    'blocked_host': '--config.data.blocked_hosts',
    'exact_dedup': '--config.data.exact_dedup=False',
    'near_dedup': '--config.data.near_dedup_threshold (higher) or --config.data.near_dedup=False',
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the stages do; the defaults turn off every stage but exact de-duplication."""
  min_chars: int = 0  # quality: shorter documents are removed
  min_letter_fraction: float = 0.0  # quality: so are those with fewer letters among visible chars
  gopher_rules: bool = False  # Gopher's quality rules and C4's punctuation rule (clean.quality)
  script: str = ''  # the target script (clean.quality.SCRIPTS) ...
  min_script_fraction: float = 0.0  # ... and the fraction of letters a document needs in it
  blocked_hosts: frozenset[str] = frozenset()  # documents whose url's host is (under) one of these
  exact_dedup: bool = True
  near_dedup: bool = False  # MinHash LSH over word n-grams (clean.dedup)
  near_dedup_threshold: float = 0.8  # estimated Jaccard similarity that makes a near-duplicate
  near_dedup_ngram: int = 5
  near_dedup_num_perm: int = 128
  scrub_pii: bool = False  # e-mail addresses, phone numbers, IP addresses, card numbers

  @classmethod
  def from_config(cls, data_cfg: ml_collections.ConfigDict) -> 'Settings':
    """The settings of config.data, checked (UserError naming the setting to fix)."""
    settings = cls(
        min_chars=data_cfg.min_chars, min_letter_fraction=data_cfg.min_letter_fraction,
        gopher_rules=data_cfg.gopher_rules, script=data_cfg.script,
        min_script_fraction=data_cfg.min_script_fraction,
        blocked_hosts=privacy.read_blocklist(data_cfg.blocked_hosts),
        exact_dedup=data_cfg.exact_dedup, near_dedup=data_cfg.near_dedup,
        near_dedup_threshold=data_cfg.near_dedup_threshold,
        near_dedup_ngram=data_cfg.near_dedup_ngram,
        near_dedup_num_perm=data_cfg.near_dedup_num_perm, scrub_pii=data_cfg.scrub_pii)
    settings.check()
    return settings

  def check(self) -> None:
    if self.script:
      quality.script_fraction('', self.script)  # UserError for an unknown script
    if not 0 <= self.min_script_fraction <= 1:
      raise UserError(f'data.min_script_fraction={self.min_script_fraction} is not in [0, 1]; '
                      'fix --config.data.min_script_fraction')
    if self.min_script_fraction and not self.script:
      raise UserError(f'data.min_script_fraction={self.min_script_fraction} needs a script to '
                      "count: set --config.data.script (e.g. 'latin')")
    if not 0 < self.near_dedup_threshold <= 1:
      raise UserError(f'data.near_dedup_threshold={self.near_dedup_threshold} is not in (0, 1]: '
                      'it is the estimated Jaccard similarity of two near-duplicates; fix '
                      '--config.data.near_dedup_threshold')
    if self.near_dedup:
      if self.near_dedup_ngram < 1 or self.near_dedup_num_perm < 2:
        raise UserError(f'data.near_dedup_ngram={self.near_dedup_ngram} must be >= 1 and '
                        f'data.near_dedup_num_perm={self.near_dedup_num_perm} >= 2; fix them')
      dedup.NearDuplicates(self.near_dedup_threshold, self.near_dedup_num_perm)  # datasketch?

  def key(self) -> dict:
    """The settings as JSON, for the prepared data's cache key and manifest; those of a stage
    that is off take their defaults, so they do not make another key for the same data."""
    default = Settings()
    acting = dataclasses.replace(
        self, **{name: getattr(default, name) for name, stage_on in (
            ('min_script_fraction', self.script), ('near_dedup_threshold', self.near_dedup),
            ('near_dedup_ngram', self.near_dedup), ('near_dedup_num_perm', self.near_dedup))
            if not stage_on})
    return {**dataclasses.asdict(acting), 'blocked_hosts': sorted(self.blocked_hosts)}


@dataclasses.dataclass(frozen=True)
class Inspected:
  """A document after its own stages: `removed_by` the stage that removed it ('' if none), else
  its text scrubbed and the keys de-duplication needs."""
  doc: Document
  chars: int  # characters before scrubbing
  removed_by: str = ''
  digest: bytes = b''
  signature: np.ndarray | None = None  # MinHash, uint64 (near_dedup_num_perm,)
  pii: dict[str, int] = dataclasses.field(default_factory=dict)


def inspect(doc: Document, settings: Settings) -> Inspected:
  """A document's own stages: the quality filters, then the keys for de-duplication (of the text
  as read), then PII scrubbing."""
  text = doc.text
  stage = _filtered_by(doc, settings)
  if stage:  # without its text: a worker sends back only what is kept
    return Inspected(Document(doc.source, ''), len(text), stage)
  digest = dedup.document_digest(text) if settings.exact_dedup else b''
  signature = (dedup.minhash_signature(text, ngram=settings.near_dedup_ngram,
                                       num_perm=settings.near_dedup_num_perm)
               if settings.near_dedup else None)
  pii = {}
  if settings.scrub_pii:
    scrubbed, pii = privacy.scrub_pii(text)
    doc = Document(doc.source, scrubbed, doc.url)
  return Inspected(doc, len(text), '', digest, signature, pii)


def _filtered_by(doc: Document, s: Settings) -> str:
  text = doc.text
  if len(text) < s.min_chars or corpus.letter_fraction(text) < s.min_letter_fraction:
    return 'quality'
  if s.gopher_rules and quality.gopher_rule_failed(text):
    return 'gopher'
  if s.script and quality.script_fraction(text, s.script) < s.min_script_fraction:
    return 'script'
  if s.blocked_hosts and privacy.host_blocked(privacy.url_host(doc.url), s.blocked_hosts):
    return 'blocked_host'
  return ''


class Deduplicator:
  """The de-duplication stages over documents in corpus order: the first copy stays."""

  def __init__(self, settings: Settings):
    self._exact: set[bytes] = set()
    self._near = (dedup.NearDuplicates(settings.near_dedup_threshold,
                                       settings.near_dedup_num_perm)
                  if settings.near_dedup else None)

  def duplicate_of_earlier(self, inspected: Inspected) -> str:
    """The stage that finds `inspected` a duplicate of an earlier document, else '' (and it is
    remembered)."""
    if inspected.digest:
      if inspected.digest in self._exact:
        return 'exact_dedup'
      self._exact.add(inspected.digest)
    if self._near is not None and self._near.seen(inspected.doc.source, inspected.signature):
      return 'near_dedup'
    return ''


@dataclasses.dataclass
class CleanReport:
  """Documents and characters in, removed by each stage, and PII replaced in the kept ones."""
  documents: int = 0
  chars: int = 0
  removed: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # stage -> [docs, chars]
  pii: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> replacements

  def count(self, inspected: Inspected, stage: str) -> None:
    self.documents += 1
    self.chars += inspected.chars
    if stage:
      removed = self.removed.setdefault(stage, [0, 0])
      removed[0] += 1
      removed[1] += inspected.chars
    else:
      for kind, n in inspected.pii.items():
        self.pii[kind] = self.pii.get(kind, 0) + n

  def add(self, other: 'CleanReport') -> None:
    self.documents += other.documents
    self.chars += other.chars
    for stage, (docs, chars) in other.removed.items():
      removed = self.removed.setdefault(stage, [0, 0])
      removed[0] += docs
      removed[1] += chars
    for kind, n in other.pii.items():
      self.pii[kind] = self.pii.get(kind, 0) + n

  @property
  def kept_documents(self) -> int:
    return self.documents - sum(docs for docs, _ in self.removed.values())

  @property
  def kept_chars(self) -> int:
    return self.chars - sum(chars for _, chars in self.removed.values())

  def summary(self, settings: Settings) -> str:
    stages = [s for s in STAGES if _enabled(s, settings)]
    removed = ', '.join(f'{s} {self.removed.get(s, [0])[0]:,} ({self.removed.get(s, [0, 0])[1]:,} '
                        'characters)' for s in stages)
    line = (f'cleaning kept {self.kept_documents:,} of {self.documents:,} documents '
            f'({self.kept_chars:,} of {self.chars:,} characters); removed by {removed or "none"}')
    if settings.scrub_pii:
      found = ', '.join(f'{n:,} {kind}' for kind, n in sorted(self.pii.items()))
      line += f'; PII replaced: {found or "none found"}'
    return line

  @classmethod
  def from_json(cls, counts: dict) -> 'CleanReport':
    return cls(counts['documents'], counts['chars'],
               {stage: [c['documents'], c['chars']] for stage, c in counts['removed'].items()},
               dict(counts['pii']))

  def to_json(self) -> dict:
    return {'documents': self.documents, 'chars': self.chars,
            'kept_documents': self.kept_documents, 'kept_chars': self.kept_chars,
            'removed': {stage: {'documents': docs, 'chars': chars}
                        for stage, (docs, chars) in self.removed.items()},
            'pii': dict(self.pii)}

  def check_kept(self, settings: Settings, loaded: corpus.LoadReport | None = None) -> None:
    """UserError when no document is left, naming the stages that removed them."""
    if self.kept_documents:
      return
    name = f'corpus {loaded.corpus}' if loaded else 'the corpus'
    invalid = (f' ({loaded.total_invalid_bytes:,} bytes were not valid UTF-8 and were replaced)'
               if loaded and loaded.total_invalid_bytes else '')
    if loaded and loaded.missing_text:
      invalid += (f' ({loaded.missing_text:,} rows without a string data.text_field were skipped:'
                  ' is --config.data.text_field right?)')
    if not self.documents:
      raise UserError(f'{name} has no documents{invalid}; point --config.data.corpus at text')
    worst = max(self.removed, key=lambda s: self.removed[s][0])
    by = ', '.join(f'{s} {docs:,}' for s, (docs, _) in self.removed.items())
    raise UserError(f'{name}: cleaning removed every one of its {self.documents:,} documents '
                    f'({by}){invalid}; pass other text, or relax {worst} with {STAGES[worst]}')


def _enabled(stage: str, s: Settings) -> bool:
  return {'quality': bool(s.min_chars or s.min_letter_fraction), 'gopher': s.gopher_rules,
          'script': bool(s.script), 'blocked_host': bool(s.blocked_hosts),
          'exact_dedup': s.exact_dedup, 'near_dedup': s.near_dedup}[stage]


def clean_documents(docs, settings: Settings, loaded: corpus.LoadReport | None = None
                    ) -> tuple[list[Document], CleanReport]:
  """Every stage over documents held in memory, in this process (preparation streams them through
  the same `inspect` and `Deduplicator`). `loaded` only makes the error clearer when nothing is
  left."""
  report, dedup_ = CleanReport(), Deduplicator(settings)
  kept = []
  for doc in docs:
    inspected = inspect(doc, settings)
    stage = inspected.removed_by or dedup_.duplicate_of_earlier(inspected)
    report.count(inspected, stage)
    if not stage:
      kept.append(inspected.doc)
  report.check_kept(settings, loaded)
  return kept, report
