"""The BPE tokenizer: exact round trips, special ids, deterministic training, errors; and the
Hugging Face tokenizer.json behind the same interface."""

import glob
import json
import os
import sysconfig

import pytest
from sentencepiece import sentencepiece_model_pb2 as pb

from gpt_jax import tokenizer as tokenizer_lib, tokenizer_extension
from gpt_jax.errors import UserError
from gpt_jax.tokenizer import HFTokenizer, Tokenizer

VOCAB = 512
TRICKY = ('  two leading spaces\n\n\n\ttab,\ttabs\t\t and   runs     of spaces \r\n'
          'digits 0123456789 3.14159, emoji 😀🎭👍🏽, CJK 日本語の文章 한국어, accents café naïve, '
          'controls \x00\x01\x07\x1b\x7f\x85, U+2581 ▁ and ▁▁x, specials <s> </s> <unk>, '
          'zero width \u200b\ufeff, trailing spaces   \n')


@pytest.fixture(scope='module')
def texts(shakespeare) -> list[str]:
  return [doc.text for doc in shakespeare[:60]]  # ~0.4 MB


@pytest.fixture(scope='module')
def tokenizer(texts) -> Tokenizer:
  return tokenizer_lib.train(texts, VOCAB)


def byte_level_bpe(texts, vocab_size: int) -> str:
  """A tokenizer.json as GPT-2 brings: byte-level BPE with the one special token <|endoftext|>."""
  tokenizers = pytest.importorskip('tokenizers', reason='needs tokenizers: pip install -e .[hf]')
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok.to_str()


@pytest.fixture(scope='module')
def hf_tokenizer(texts) -> HFTokenizer:
  return HFTokenizer(byte_level_bpe(texts, VOCAB).encode())


def test_round_trip_is_exact_on_the_corpus(tokenizer, shakespeare):
  texts = [doc.text for doc in shakespeare]  # all of it, most unseen in training
  ids = tokenizer.encode_batch(texts)
  assert [tokenizer.decode(i) for i in ids] == texts
  assert 1.7 < sum(map(len, texts)) / sum(map(len, ids)) < 1.9  # characters per token


@pytest.mark.parametrize('text', [TRICKY, '', ' ', '\n', '▁', 'x▁', ' ▁ ', '\U0010ffff'])
def test_round_trip_is_exact_on_tricky_text(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tokenizer.encode_batch([text, 'x', text]) == [ids, tokenizer.encode('x'), ids]


def test_special_ids_and_pieces(tokenizer):
  assert tokenizer.vocab_size == VOCAB
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  ids = tokenizer.encode(TRICKY)
  assert all(3 <= i < VOCAB for i in ids)  # no unk, BOS or EOS in the text's tokens
  assert tokenizer.encode('\n') == [3]  # a newline is one token
  assert tokenizer.encode('\n\n') == [3, 3]
  assert len(tokenizer.encode(' the')) == 1  # common words with their leading space are one token
  assert tokenizer.decode([1, *tokenizer.encode('hi'), 2]) == 'hi'


def test_training_is_deterministic(tokenizer, texts):
  again = tokenizer_lib.train(iter(texts), VOCAB)  # an iterator, not a list: the same model
  assert again.sha256 == tokenizer.sha256
  assert len(tokenizer.sha256) == 64
  assert tokenizer_lib.train(texts[1:], VOCAB).sha256 != tokenizer.sha256


def test_save_and_load(tokenizer, tmp_path):
  path = str(tmp_path / 'tok.model')
  tokenizer.save(path)
  assert [p.name for p in tmp_path.iterdir()] == ['tok.model']  # no temporary file left
  loaded = Tokenizer.load(path)
  assert loaded.sha256 == tokenizer.sha256
  assert loaded.encode(TRICKY) == tokenizer.encode(TRICKY)


def test_loading_a_missing_or_corrupt_file_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match=r"^cannot read tokenizer '.*nope.model': No such file or "
                     r'directory; set --config.data.tokenizer to a sentencepiece .model file'):
    Tokenizer.load(str(tmp_path / 'nope.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(UserError,
                     match=r"^tokenizer '.*junk.model' is not a sentencepiece model; set"):
    Tokenizer.load(str(tmp_path / 'junk.model'))


def test_a_vocab_size_sentencepiece_cannot_reach_is_a_user_error(texts):
  # 256 bytes, unk, BOS, EOS and '\n', and 59 of the other 64 characters (the rarest go to bytes)
  with pytest.raises(UserError, match=r'^vocab_size 100 is too small: the tokenizer needs 319 '
                     r'tokens .*; set --config.model.vocab_size >= 319$'):
    tokenizer_lib.train(texts, 100)
  with pytest.raises(UserError, match=r'^vocab_size 30000 is too large: BPE finds at most '
                     r'\d+ tokens.*; set --config.model.vocab_size <= \d+ or use a larger corpus$'):
    tokenizer_lib.train(texts[:2], 30000)


# --- what a document spells, and ids beyond the vocabulary: both kinds alike --------------------

SPELLS_SPECIALS = 'one document <|endoftext|> not two</s><s> <unk> <0x0A> <|begin_of_text|>\n'


@pytest.mark.parametrize('kind', ['sentencepiece', 'tokenizer.json'])
def test_text_that_spells_a_special_token_is_text(kind, tokenizer, hf_tokenizer):
  tok = {'sentencepiece': tokenizer, 'tokenizer.json': hf_tokenizer}[kind]
  ids = tok.encode(SPELLS_SPECIALS)
  assert tok.eos_id not in ids and tok.bos_id not in ids
  assert tok.decode(ids) == SPELLS_SPECIALS
  assert tok.encode_batch([SPELLS_SPECIALS]) == [ids]


@pytest.mark.parametrize('kind', ['sentencepiece', 'tokenizer.json'])
def test_decoding_an_id_beyond_the_vocabulary_is_a_user_error(kind, tokenizer, hf_tokenizer):
  tok = {'sentencepiece': tokenizer, 'tokenizer.json': hf_tokenizer}[kind]
  ids = tok.encode('hi')
  assert tok.decode(ids + [tok.vocab_size - 1])  # the last id is in the vocabulary
  for bad in (tok.vocab_size, -1):
    with pytest.raises(UserError, match=rf'^cannot decode token id {bad}: the tokenizer has '
                       rf'{tok.vocab_size} tokens \(ids 0 to {tok.vocab_size - 1}\); decode only'):
      tok.decode(ids + [bad])


def test_a_tokenizer_json_with_a_byte_order_mark_loads(hf_tokenizer, tmp_path):
  path = tmp_path / 'tokenizer.json'
  hf_tokenizer.save(str(path))
  path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())  # as Windows' Notepad saves UTF-8
  loaded = tokenizer_lib.load(str(path))
  assert (loaded.eos_id, loaded.vocab_size) == (hf_tokenizer.eos_id, hf_tokenizer.vocab_size)
  assert loaded.encode(SPELLS_SPECIALS) == hf_tokenizer.encode(SPELLS_SPECIALS)


# --- extending a tokenizer to a new domain (Swallow) -------------------------------------------


def stdlib_code(count: int) -> list[str]:
  """Python's own standard library sources: a domain every machine has and Shakespeare lacks."""
  paths = sorted(glob.glob(os.path.join(sysconfig.get_paths()['stdlib'], '*.py')))
  return [open(p, encoding='utf-8').read() for p in paths[:count]]


@pytest.fixture(scope='module')
def extended(tokenizer):
  return tokenizer_extension.extend(tokenizer, stdlib_code(10), 64)


def test_extension_appends_the_new_domains_pieces_and_keeps_every_old_id(tokenizer, extended):
  ext, new = extended.tokenizer, extended.pieces
  assert len(new) == 64 and ext.vocab_size == VOCAB + 64 and '▁▁▁▁' in new
  old, grown = pb.ModelProto(), pb.ModelProto()
  old.ParseFromString(tokenizer._proto)
  grown.ParseFromString(ext._proto)
  assert list(grown.pieces)[:VOCAB] == list(old.pieces)  # piece, score and type of every old id
  assert [p.piece for p in list(grown.pieces)[VOCAB:]] == new
  assert max(p.score for p in list(grown.pieces)[VOCAB:]) < min(
      p.score for p in old.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL)
  assert (ext.eos_id, ext.bos_id) == (tokenizer.eos_id, tokenizer.bos_id)
  assert [tokenizer.decode(ids) for ids in extended.parts] == [
      p.replace('▁', ' ') for p in new]


def shortens_and_round_trips(base, ext, also=()) -> float:
  """ext's tokens per byte of held-out code over base's, after checking that ext round-trips
  that code, TRICKY and `also` wherever base does."""
  held_out = stdlib_code(14)[10:]
  for text in [*held_out, TRICKY, '▁▁x', '', *also]:
    if base.decode(base.encode(text)) == text:
      assert ext.decode(ext.encode(text)) == text, text[:80]
  per_byte = lambda tok: sum(len(tok.encode(t)) for t in held_out) / sum(
      len(t.encode()) for t in held_out)
  return per_byte(ext) / per_byte(base)


def test_an_extended_tokenizer_round_trips_and_shortens_the_new_domain(tokenizer, extended,
                                                                       shakespeare):
  ext = extended.tokenizer
  assert ext.decode(ext.encode(TRICKY)) == TRICKY
  assert shortens_and_round_trips(tokenizer, ext, [shakespeare[100].text]) < 0.8


def byte_fallback_bpe(texts, vocab_size: int) -> str:
  """A tokenizer.json as LLaMA 2 and Mistral bring: BPE over whole texts with spaces as '▁', a
  dummy prefix, and byte fallback through the 256 byte tokens <0x00>..<0xFF>."""
  tokenizers = pytest.importorskip('tokenizers', reason='needs tokenizers: pip install -e .[hf]')
  from tokenizers import decoders, models, normalizers, trainers
  tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token='<unk>', fuse_unk=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend('▁'), normalizers.Replace(' ', '▁')])
  tok.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(' ', 1, 0)])
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(prepend_scheme='never')
  specials = ['<unk>', '<s>', '</s>'] + [f'<0x{b:02X}>' for b in range(256)]
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size,
                                                     special_tokens=specials, limit_alphabet=80))
  spec = json.loads(tok.to_str())
  spec['pre_tokenizer'] = None  # LLaMA 2's has none: the model sees whole texts
  return json.dumps(spec)


@pytest.mark.parametrize('kind', ['byte-level', 'byte-fallback'])
def test_a_hugging_face_bpe_extends_with_merges_after_the_bases(texts, kind):
  make = byte_level_bpe if kind == 'byte-level' else byte_fallback_bpe
  base = HFTokenizer(make(texts, VOCAB).encode())
  extension = tokenizer_extension.extend(base, stdlib_code(10), 64)
  ext, new = extension.tokenizer, extension.pieces
  assert ext.vocab_size == VOCAB + len(new) and 48 <= len(new) <= 64
  old, grown = (json.loads(t._data)['model'] for t in (base, ext))
  assert all(grown['vocab'][token] == i for token, i in old['vocab'].items())
  assert [grown['vocab'][token] for token in new] == list(range(VOCAB, ext.vocab_size))
  assert grown['merges'][:len(old['merges'])] == old['merges']
  # A merge makes each new piece but the characters a byte-fallback base spelled in bytes.
  assert len(grown['merges']) == len(old['merges']) + sum(len(token) > 1 for token in new)
  for token, ids in zip(new, extension.parts):
    assert max(ids) < VOCAB and base.decode(ids) == ext.decode([grown['vocab'][token]])
  assert (ext.eos_id, ext.bos_id) == (base.eos_id, base.bos_id)
  # The byte-fallback base has 253 pieces beside its bytes: 64 buy less than on the byte-level one.
  assert shortens_and_round_trips(base, ext, texts[:3]) < (0.85 if kind == 'byte-level' else 0.95)


def test_bad_extensions_are_one_line(tokenizer, hf_tokenizer):
  with pytest.raises(UserError, match='^--pieces=0: the pieces to add must be >= 1'):
    tokenizer_extension.extend(tokenizer, ['x'], 0)
  with pytest.raises(UserError, match="^the new domain's corpus has no text"):
    tokenizer_extension.extend(tokenizer, [' \n'], 8)
  with pytest.raises(UserError, match="^the new domain's text has no piece the base lacks"):
    tokenizer_extension.extend(tokenizer, ['a a a a'], 8)
  spec = json.loads(hf_tokenizer._data)
  spec['model'] = {'type': 'WordLevel', 'vocab': spec['model']['vocab'], 'unk_token': '!'}
  with pytest.raises(UserError, match="^the base's tokenizer.json is a WordLevel model"):
    tokenizer_extension.extend(HFTokenizer(json.dumps(spec).encode()), ['x'], 8)
