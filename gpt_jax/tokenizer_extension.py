"""Extending a tokenizer with a new domain's pieces, as Swallow extended Llama 2's (Fujii et al.
2024, "Continual Pre-Training for Cross-Lingual LLM Adaptation"): a BPE tokenizer trained on the
new domain's text proposes pieces, and those the base lacks are appended to it, most frequent
first (BPE's merge order), after every base id. Every old id keeps its piece, the base's merges
still come first (a new piece forms where they leave its parts side by side), and every text
still round-trips exactly as it did with the base.

- sentencepiece (`Tokenizer`: the project's own, and LLaMA's tokenizer.model): the proposal is
  trained with tokenizer.py's settings; the new pieces are scored below every base piece.
- Hugging Face BPE (`HFTokenizer`: GPT-2's and LLaMA 3's byte-level tokenizer.json, or a
  byte-fallback one like Mistral's): the proposal is trained by the `tokenizers` package with the
  base's own normalizer and pre-tokenizer; each new piece joins the vocabulary with the merge
  that makes it, appended after the base's merges (a piece whose parts the extended vocabulary
  lacks is skipped); a byte-fallback model also gains the characters it spelled in bytes.

`Extension.parts` are, for each new piece, the base ids it is made of (what vocab_expansion
averages to initialise its embedding row): the base's encoding of the piece's text
(sentencepiece), or its merge tree unfolded down to base tokens, a new character's down to its
UTF-8 bytes (Hugging Face).
"""

import dataclasses
import json
import re
from collections.abc import Sequence

from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.tokenizer import HFTokenizer, Tokenizer

_SPACE = '\u2581'  # sentencepiece's '▁', the space inside pieces


@dataclasses.dataclass(frozen=True)
class Extension:
  tokenizer: 'Tokenizer | HFTokenizer'  # the base's ids, then the new pieces'
  pieces: list[str]  # the new pieces in id order, from the base's vocab_size on
  parts: list[list[int]]  # per new piece, the base ids it is made of


def extend(base: 'Tokenizer | HFTokenizer', texts: Sequence[str], pieces: int) -> Extension:
  """The base tokenizer with up to `pieces` pieces of `texts` appended (module docstring).
  UserError for pieces <= 0, no text, a tokenizer.json that is not BPE (or whose ids have gaps),
  or a text with nothing the base lacks."""
  if pieces <= 0:
    raise UserError(f'--pieces={pieces}: the pieces to add must be >= 1')
  if not any(t.strip() for t in texts):
    raise UserError('the new domain\'s corpus has no text; pass files with text')
  extension = (_extend_sentencepiece(base, texts, pieces) if isinstance(base, Tokenizer)
               else _extend_bpe_json(base, texts, pieces))
  if not extension.pieces:
    raise UserError('the new domain\'s text has no piece the base lacks: nothing to add; pass a '
                    'corpus of the new domain')
  return extension


def _extend_sentencepiece(base: Tokenizer, texts: Sequence[str], pieces: int) -> Extension:
  from sentencepiece import sentencepiece_model_pb2  # protobuf: only extension edits a model
  proposal = _train_up_to(texts, base.vocab_size + pieces)
  normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
  extended, proposed = (sentencepiece_model_pb2.ModelProto() for _ in range(2))
  extended.ParseFromString(base._proto)
  proposed.ParseFromString(proposal._proto)
  have = {p.piece for p in extended.pieces}
  new = [p.piece for p in proposed.pieces if p.type == normal and p.piece not in have][:pieces]
  lowest = min(p.score for p in extended.pieces if p.type == normal)
  for i, piece in enumerate(new, 1):
    extended.pieces.add(piece=piece, score=lowest - i, type=normal)
  parts = base.encode_batch([piece.replace(_SPACE, ' ') for piece in new])
  return Extension(Tokenizer(extended.SerializeToString()), new, parts)


def _train_up_to(texts: Sequence[str], vocab_size: int) -> Tokenizer:
  """tokenizer.train(texts, vocab_size), or the largest vocabulary BPE finds in them if smaller."""
  try:
    return tokenizer_lib.train(texts, vocab_size)
  except UserError as e:
    if m := re.search(r'BPE finds at most (\d+) tokens', str(e)):
      return tokenizer_lib.train(texts, int(m[1]))
    raise


def _extend_bpe_json(base: HFTokenizer, texts: Sequence[str], pieces: int) -> Extension:
  spec = json.loads(base._data.decode('utf-8-sig'))
  model = spec['model']
  if model.get('type') != 'BPE' or model.get('continuing_subword_prefix') or model.get(
      'end_of_word_suffix'):
    raise UserError(f'the base\'s tokenizer.json is a {model.get("type")} model with word '
                    'prefixes or suffixes; only byte-level or byte-fallback BPE (GPT-2, LLaMA, '
                    'Mistral) can be extended: extend a run with such a tokenizer')
  vocab = dict(model['vocab'])
  ids = set(vocab.values()) | {t['id'] for t in spec.get('added_tokens', [])}
  if ids != set(range(base.vocab_size)):
    raise UserError(f'the base\'s tokenizer.json has gaps in its ids (0..{base.vocab_size - 1}); '
                    'new ids must follow the last one: extend a tokenizer with contiguous ids')
  proposal = _train_bpe_json(spec, texts, base.vocab_size + pieces)
  have = set(vocab) | {t['content'] for t in spec.get('added_tokens', [])}
  made_by = {left + right: (left, right) for left, right in map(_pair, proposal['merges'])}
  byte_ids = [vocab.get(f'<0x{b:02X}>') for b in range(256)] if model.get('byte_fallback') else []
  new, merges, parts = [], [], {}
  for token in sorted(proposal['vocab'], key=proposal['vocab'].get):  # BPE's order
    if len(new) == pieces:
      break
    pair = made_by.get(token)
    if token in have or (pair is not None and not set(pair) <= have):
      continue
    if pair is not None:
      merges.append(pair)
      parts[token] = [i for part in pair for i in parts.get(part, [vocab.get(part)])]
    elif len(token) == 1 and None not in byte_ids:  # a character the base spelled in bytes
      parts[token] = [byte_ids[b] for b in token.encode()]
    else:
      continue
    new.append(token)
    have.add(token)
  for i, token in enumerate(new):
    vocab[token] = base.vocab_size + i
  strings = model['merges'] and isinstance(model['merges'][0], str)  # the file's older format
  spec['model'] = {**model, 'vocab': vocab, 'merges': model['merges'] + [
      ' '.join(pair) if strings else list(pair) for pair in merges]}
  return Extension(HFTokenizer(json.dumps(spec, ensure_ascii=False).encode()), new,
                   [parts[token] for token in new])


def _train_bpe_json(spec: dict, texts: Sequence[str], vocab_size: int) -> dict:
  """The model (vocab, merges) of a BPE tokenizer trained on `texts` with the normalizer and
  pre-tokenizer of the tokenizer.json `spec` (its byte alphabet, if byte-level)."""
  import tokenizers  # the base HFTokenizer could only be read with it installed
  empty = {**spec, 'added_tokens': [], 'post_processor': None,
           'model': {**spec['model'], 'vocab': {}, 'merges': [], 'unk_token': None}}
  proposal = tokenizers.Tokenizer.from_str(json.dumps(empty))
  if spec.get('pre_tokenizer') is None:  # LLaMA 2's: BPE over whole texts, spaces as '▁'
    # Proposals are cut at spaces, as sentencepiece trains them (split_by_whitespace).
    proposal.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(prepend_scheme='never')
  byte_level = '"ByteLevel"' in json.dumps(spec.get('pre_tokenizer'))
  alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet() if byte_level else []
  proposal.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False))
  return json.loads(proposal.to_str())['model']


def _pair(merge) -> tuple[str, str]:
  """A merge as (left, right), from either of tokenizer.json's formats: 'l r' or ['l', 'r']."""
  left, right = merge.split(' ', 1) if isinstance(merge, str) else merge
  return left, right
