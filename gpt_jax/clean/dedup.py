"""De-duplication keys: exact (a digest of the text) and near (MinHash signatures and an LSH index).

Near-duplicates are found as in Broder 1997, "On the resemblance and containment of documents":
a document is the set of its word n-grams (shingles), two documents resemble each other by the
Jaccard similarity of their sets, and MinHash signatures estimate it: the fraction of num_perm
hash permutations under which the two sets have the same minimum. Locality-sensitive hashing over
bands of the signature (Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets", 3.4) finds
the candidate pairs without comparing every pair. GPT-3's training data was de-duplicated so
(Brown et al. 2020, Appendix A, with Spark's MinHashLSH); here both come from the datasketch
package, as in BigCode's near-deduplication of The Stack.
"""

import hashlib
import zlib

import numpy as np

from gpt_jax.errors import UserError

# datasketch's default since 2.0: 32-bit hash values, an affine permutation of each.
_SCHEME = 'affine32'


def minhash_signature(text: str, *, ngram: int, num_perm: int, seed: int = 1) -> np.ndarray:
  """The MinHash signature of the word `ngram`-grams of `text`: uint64 [num_perm].

  Words are the lower-cased whitespace-separated tokens; a shingle is `ngram` consecutive words
  joined by ' ' and utf-8 encoded (a document of fewer words is one shingle of all of them).
  Each shingle is hashed with CRC-32: deterministic in every process (Python's hash() is not),
  three times faster than datasketch's default of 32 bits of SHA-1, and as accurate: over 300
  pairs of Shakespeare scenes and edited copies, the Jaccard estimates at num_perm=128 had a
  root-mean-square error of 0.027 either way. Signatures of different `seed`s or `num_perm`s do
  not compare.

  Raises UserError when datasketch is not installed.
  """
  datasketch = _datasketch()
  words = text.lower().split()
  # A shingle is the slice of the joined words from its first word's start to its last's end.
  joined = ' '.join(words).encode('utf-8', 'surrogatepass')
  spaces = np.flatnonzero(np.frombuffer(joined, np.uint8) == ord(' '))
  starts = np.concatenate([[0], spaces + 1])[:max(1, len(words) - ngram + 1)]
  ends = np.append(spaces, len(joined))[min(len(words), ngram) - 1:]
  shingles = [joined[start:end] for start, end in zip(starts.tolist(), ends.tolist())]
  minhash = datasketch.MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32,
                               permutations=_permutations(num_perm, seed), scheme=_SCHEME)
  minhash.update_batch(shingles)
  return minhash.hashvalues.astype(np.uint64)


_permutation_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """datasketch's permutation parameters for (num_perm, seed), drawn once per process (drawing
  them takes a quarter as long as a 6 KB document's signature)."""
  if (num_perm, seed) not in _permutation_cache:
    minhash = _datasketch().MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)
    _permutation_cache[num_perm, seed] = minhash.permutations
  return _permutation_cache[num_perm, seed]


class NearDuplicates:
  """The documents kept so far, by signature: `seen` says whether a new one resembles one of them
  (and keeps it when not), so the first of a group of near-duplicates is kept."""

  def __init__(self, threshold: float, num_perm: int):
    """threshold: the estimated Jaccard similarity, in (0, 1], from which a document is a
    near-duplicate of a kept one. num_perm: the length of the signatures that `seen` gets.

    Raises UserError for a threshold out of range, too few permutations, or no datasketch.
    """
    if not 0 < threshold <= 1:
      raise UserError(f'--config.data.near_dedup_threshold is {threshold}; set a Jaccard '
                      'similarity in (0, 1], e.g. 0.8')
    if num_perm < 2:
      raise UserError(f'near-duplicate removal needs signatures of at least 2 permutations, not '
                      f'{num_perm}; raise --config.data.near_dedup_num_perm (e.g. 128)')
    datasketch = _datasketch()
    self.threshold = threshold
    self.num_perm = num_perm
    self._lean_minhash = datasketch.LeanMinHash
    try:
      # Bands tuned for recall: with datasketch's even weights (b=9, r=13 at 0.8 and 128
      # permutations) a pair at the threshold is a candidate 40% of the time; with these (b=14,
      # r=9) 87%, at 0.85 97%. The extra candidates cost a signature comparison each.
      self._lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm,
                                        weights=(0.1, 0.9))
    except ValueError:
      # Near a threshold of 1 datasketch's optimal banding is one band of every row, which it
      # refuses; two bands of half the rows find the same pairs and more.
      self._lsh = datasketch.MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))
    self._signatures: dict[str, np.ndarray] = {}

  def seen(self, key: str, signature: np.ndarray) -> bool:
    """Whether a kept document's signature agrees with `signature` (uint [num_perm], from
    `minhash_signature`) in at least `threshold` of its entries; when not, the document is kept
    under `key`, which must be new. The LSH index proposes candidates; comparing their signatures
    drops the index's false positives.
    """
    # The index reads only the hash values, so the seed the signature came from need not be known.
    minhash = self._lean_minhash(seed=0, hashvalues=signature, scheme=_SCHEME)
    for candidate in self._lsh.query(minhash):
      agreeing = np.count_nonzero(self._signatures[candidate] == minhash.hashvalues)
      if agreeing / self.num_perm >= self.threshold:
        return True
    self._lsh.insert(key, minhash)
    self._signatures[key] = minhash.hashvalues
    return False

  def __len__(self) -> int:
    """The number of documents kept."""
    return len(self._signatures)


def document_digest(text: str) -> bytes:
  """The exact de-duplication key of `text`: the first 16 bytes of the SHA-256 of its utf-8."""
  return hashlib.sha256(text.encode('utf-8', 'surrogatepass')).digest()[:16]


def _datasketch():
  try:
    import datasketch
  except ImportError:
    raise UserError("near-duplicate removal needs the datasketch package: pip install -e '.[data]' "
                    '(or set --config.data.near_dedup=False)') from None
  return datasketch
