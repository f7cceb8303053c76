"""Privacy reduction: personal identifiers in the text replaced by placeholders, and blocked hosts.

`scrub_pii` takes the regular-expression approach of the PII step of BigScience's ROOTS corpus
(Laurençon et al. 2022, "The BigScience ROOTS Corpus"; e-mail and IP addresses and the like
replaced by tags) and datatrove's PIIFormatter (github.com/huggingface/datatrove; e-mail and
public IP addresses), extended to phone and payment-card numbers. Regular expressions trade
recall for precision: a number is a phone number only with separators in the shape of one or a
leading '+', a card number only when its Luhn check digit is right, so that years, counts,
prices, dates and version strings stay.

`url_host`, `host_blocked` and `read_blocklist` serve dropping documents from blocked sites, as
the URL filters of RefinedWeb (Penedo et al. 2023) and FineWeb do with the UT1 blocklist.
"""

import ipaddress
import os
import re

from gpt_jax import files
from gpt_jax.errors import UserError

EMAIL, PHONE, IP_ADDRESS, CARD = '<EMAIL>', '<PHONE>', '<IP_ADDRESS>', '<CARD>'

# The patterns start with '@' or ':' or run over short pieces of the text: Python's re scans fast
# for a literal, but tries a pattern that starts with a look-behind at every character (0.2 ms
# for 6 KB).
_EMAIL_DOMAIN = re.compile(r'@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b')
_EMAIL_LOCAL_PART = re.compile(r'(?<![\w.+-])[\w.+-]{1,64}\Z')  # RFC 5321: at most 64
# Every card, IPv4 address and phone number lies in a run of digits and separators.
_NUMBER_RUN = re.compile(r'[+(0-9][0-9 ().+-]*[0-9]')
_SHORTEST_NUMBER = 7  # characters: '1.2.3.4'; phone numbers have 8 digits or more, cards 13
# 13 to 19 digits, in one run or split by one kind of separator into the groups printed on cards:
# four digits, then four to six, then one to three groups of three to five (4-4-4-4 Visa and
# Mastercard, 4-6-5 American Express, 4-6-4 Diners Club, 4-4-4-4-3). The first digit names the
# network: 2 and 5 Mastercard, 3 American Express and Diners Club, 4 Visa, 6 Discover.
_CARD = re.compile(r'(?<![\w.,+-])(?:[2-6][0-9]{12,18}|[2-6][0-9]{3}(?P<sep>[ -])[0-9]{4,6}'
                   r'(?:(?P=sep)[0-9]{3,5}){1,3})(?![\w-]|[.,][0-9])')
_IPV4 = re.compile(r'(?<![\w.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![\w]|\.[0-9])')
# A dotted quad is a version or section number, not an address, after a word that names one
# ('version 1.2.3.4', 'Ver. 1.2.3.4', 'firmware version number is 1.2.3.4', '§ 2.3.4.5', and the
# rest of a list: 'versions 1.2.3.4, 1.2.3.5 and 1.2.3.6') or before one ('the 1.0.0.12 firmware').
_VERSION_WORD = (r'(?:versions?|ver|releases?|builds?|firmwares?|kernels?|drivers?|bios|'
                 r'patch(?:es)?|revisions?|rev|sections?|sec|chapters?|clauses?|articles?|'
                 r'paragraphs?|para|appendix|appendices)\b')
_VERSION_BEFORE = re.compile(
    rf'(?:\b{_VERSION_WORD}\.?|§+)[\s:#=(\'"]*'
    r'(?:(?:number|no|nr|is|was)\b\.?[\s:#=(\'"]*)*'
    r'(?:[0-9]+(?:\.[0-9]+)*[\s\'")]*(?:,|and\b|or\b|to\b|-)[\s(\'"]*)*\Z', re.IGNORECASE)
_VERSION_AFTER = re.compile(rf'[ \t]+{_VERSION_WORD}', re.IGNORECASE)
_VERSION_CONTEXT = 80  # characters before a dotted quad searched for a word that names a version
# International: '+', a country code, then groups that may be split by a space, '.' or '-'
# (the area code perhaps in parentheses). National: an area code (perhaps in parentheses) and two
# groups, split by separators, as '(555) 123-4567', '555.123.4567', '03-1234-5678', with NANP's
# optional leading '1-'. The digits are counted afterwards.
_PHONE = re.compile(r'(?<![\w+.-])(?:\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})){1,6}'
                    r'|(?:1[ .-])?(?:\([0-9]{2,4}\) ?|[0-9]{2,4}[ .-])[0-9]{3,4}[ .-][0-9]{4})'
                    r'(?![\w-]|[.,][0-9])')
_PHONE_DIGITS = {'+': range(8, 16), '': range(10, 12)}  # E.164: at most 15 digits
# An IPv6 address has '::' or eight groups, and so three in a row between colons.
_IPV6_HINT = re.compile(r':[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:')
_IPV6 = re.compile(r'(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.[0-9])')
_GLOBAL_UNICAST = ipaddress.ip_network('2000::/3')


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
  """`text` with e-mail addresses, payment-card numbers, IP addresses and phone numbers replaced
  by EMAIL, CARD, IP_ADDRESS and PHONE, and how many of each kind were replaced (keys 'email',
  'card', 'ip_address', 'phone'; only kinds that occurred).

  Cards go before phones, whose shapes overlap. IPv4 addresses have four octets of 0-255; a
  dotted quad after (or before) a word that names a version or section ('version 1.2.3.4',
  'section 4.1.2.3', '§ 2.3.4.5', 'the 1.0.0.12 firmware') is that number and stays. Only
  public IP addresses are replaced, as datatrove does by default: private, loopback, link-local
  and documentation addresses (192.168.0.1, ::1, fe80::1, 203.0.113.5) identify nobody and are
  common in technical text. A phone number has 8 to 15 digits after a '+', or 10 or 11 in the
  national forms.
  """
  counts = {}
  if '@' in text:
    text = _scrub_emails(text, counts)
  if any(digit in text for digit in '0123456789'):
    text = _scrub_numbers(text, counts)
  if '::' in text or _IPV6_HINT.search(text):
    text = _replace(_IPV6, text, 'ip_address', IP_ADDRESS, counts, _is_public_ip)
  return text, counts


def _scrub_emails(text: str, counts: dict[str, int]) -> str:
  """`text` with each domain after an '@' that follows a local part replaced, with the local
  part, by EMAIL."""
  pieces, end = [], 0
  for domain in _EMAIL_DOMAIN.finditer(text):
    at = domain.start()
    local_part = _EMAIL_LOCAL_PART.search(text, max(end, at - 64), at)
    if local_part:
      pieces += [text[end:local_part.start()], EMAIL]
      end = domain.end()
  if pieces:
    counts['email'] = len(pieces) // 2
  return ''.join(pieces) + text[end:]


def _scrub_numbers(text: str, counts: dict[str, int]) -> str:
  """`text` with cards, IPv4 addresses and phone numbers replaced, each run of digits and
  separators matched with a character of context before and two after (the patterns'
  look-behind and look-ahead)."""
  pieces, end = [], 0
  for run in _NUMBER_RUN.finditer(text):
    start, stop = run.span()
    if stop - start < _SHORTEST_NUMBER:
      continue
    before, after = min(start, 1), min(len(text) - stop, 2)
    local = text[start - before:stop + after]
    if stop - start >= 13:
      local = _replace(_CARD, local, 'card', CARD, counts, _is_card)
    if '.' in run[0]:
      local = _replace(_IPV4, local, 'ip_address', IP_ADDRESS, counts,
                       lambda ip: _is_public_ip(ip) and not _names_a_version(text, start, stop))
    local = _replace(_PHONE, local, 'phone', PHONE, counts, _is_phone)
    pieces += [text[end:start], local[before:len(local) - after]]
    end = stop
  return ''.join(pieces) + text[end:]


def _names_a_version(text: str, start: int, stop: int) -> bool:
  """Whether the words around text[start:stop], a run of digits, say it is a version or section
  number."""
  return bool(_VERSION_BEFORE.search(text, max(0, start - _VERSION_CONTEXT), start)
              or _VERSION_AFTER.match(text, stop))


def _replace(pattern: re.Pattern, text: str, kind: str, placeholder: str, counts: dict[str, int],
             accept) -> str:
  """`text` with the matches of `pattern` that `accept` (a predicate on the matched string)
  replaced by `placeholder`, counted in counts[kind]."""
  found = 0

  def substitute(match: re.Match) -> str:
    nonlocal found
    if not accept(match[0]):
      return match[0]
    found += 1
    return placeholder

  text = pattern.sub(substitute, text)
  if found:
    counts[kind] = counts.get(kind, 0) + found
  return text


def _is_card(candidate: str) -> bool:
  """Whether the digits of `candidate` (13 to 19) pass the Luhn check (ISO/IEC 7812-1)."""
  digits = [int(c) for c in reversed(candidate) if c.isdigit()]
  if not 13 <= len(digits) <= 19:
    return False
  doubled = (d * 2 - 9 if d > 4 else d * 2 for d in digits[1::2])
  return (sum(digits[0::2]) + sum(doubled)) % 10 == 0


def _is_phone(candidate: str) -> bool:
  digits = sum(c.isdigit() for c in candidate)
  return digits in _PHONE_DIGITS['+' if candidate.startswith('+') else '']


def _is_public_ip(candidate: str) -> bool:
  try:
    address = ipaddress.ip_address(candidate)
  except ValueError:
    return False
  # Public IPv6 addresses are global unicast, 2000::/3: that also keeps hex words ('a::b').
  return address.is_global and (address.version == 4 or address in _GLOBAL_UNICAST)


# 'host:8080' is a host and a port, not a URL of scheme 'host' as RFC 3986 would read it.
_SCHEME = re.compile(r'[A-Za-z][A-Za-z0-9+.-]*:(?![0-9]+(?:[/?#]|\Z))')
_AUTHORITY_END = re.compile(r'[/?#\\]')
_HOST_AND_PORT = re.compile(r'(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[\w.-]+))(?::[0-9]*)?')


def url_host(url: str) -> str:
  """The lower-case host name of `url` without a trailing dot, its scheme, user and port, or ''
  when it names none: 'https://WWW.Example.com:8080/a', 'www.example.com:8080/a',
  '//user@www.example.com./a' -> 'www.example.com'; 'http://[2001:DB8::1]/' -> '2001:db8::1'.

  A URL without a scheme names its host first, as a crawl's url fields often do; a URL with one
  names it after '//' (RFC 3986), so 'mailto:a@b.org' and a path '/a/b' name none.
  """
  url = url.strip()
  scheme = _SCHEME.match(url)
  rest = url[scheme.end():] if scheme else url
  if rest.startswith('//'):
    rest = rest[2:]
  elif scheme or rest.startswith('/'):
    return ''
  authority = _AUTHORITY_END.split(rest, maxsplit=1)[0].rpartition('@')[2]
  host = _HOST_AND_PORT.fullmatch(authority)
  return (host['ipv6'] or host['name']).lower().rstrip('.') if host else ''


def host_blocked(host: str, blocked: frozenset[str]) -> bool:
  """Whether `host` or a domain it belongs to is in `blocked`: 'a.b.example.com' is blocked by
  'example.com' (and by 'com'), not by 'ample.com'; 'example.com' also by 'www.example.com', the
  same site."""
  if not blocked or not host:
    return False
  labels = host.split('.')
  return (any('.'.join(labels[i:]) in blocked for i in range(len(labels)))
          or f'www.{host}' in blocked)


def read_blocklist(spec: str) -> frozenset[str]:
  """The blocked host names given by `spec`: '' (none), a text file of host names, or host names
  separated by commas. Names are lower-cased and lose a leading '*.' or '.' and a trailing '.'.

  The file holds one name a line (byte-order marks at a line's start ignored); '#' starts a
  comment and blank lines are skipped. A line of several fields (a hosts file's '0.0.0.0
  example.com') gives its last. A spec names a file when one exists at that path; a spec with a
  '/' that is not a file raises UserError.
  """
  if not spec.strip():
    return frozenset()
  if os.path.isfile(spec):
    with open(spec, encoding='utf-8') as f:
      names = [line.lstrip(files.BOM).split('#', 1)[0].split()[-1:] for line in f]
    names = [fields[0] for fields in names if fields]
  elif '/' in spec:
    raise UserError(f'blocklist {spec} is not a file; set --config.data.blocked_hosts to a file '
                    'of host names, one a line, or to host names separated by commas')
  else:
    names = spec.split(',')
  hosts = (name.strip().lower().removeprefix('*.').lstrip('.').rstrip('.') for name in names)
  return frozenset(host for host in hosts if host)
