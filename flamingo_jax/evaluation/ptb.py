"""The COCO caption evaluation's tokenisation in Python, equal to pycocoevalcap's `PTBTokenizer`.

pycocoevalcap joins the captions with newlines (a caption's own "\\n" becomes a space), runs
Stanford CoreNLP 3.4.1's Java PTBTokenizer on them with `-preserveLines -lowerCase` (otherwise its
defaults: PTB3 escaping, no americanisation, assimilations split, untokenisable characters dropped)
and drops the tokens in `PUNCTUATION`. This module re-implements that JFlex lexer: rules, each a
regular expression with an optional trailing context; at each position the rule with the longest
match (trailing context included) wins, the earlier rule on ties; its action makes a token (or
none) and may give characters back. As in Java, characters beyond U+FFFF are two UTF-16 surrogates
(so emoji are dropped), letters and digits are Unicode 6.3's, and tokens are lower-cased as Java 17
does (Unicode 13; a capital sigma is final by java.text.BreakIterator's words).

`tokenize_captions` is pycocoevalcap's batch: one lexer run over all captions, whose rules look
ahead across a caption's end ("I saw Z." gives "i saw z" before a caption "A dog ...", "i saw z." as
the last caption). One deliberate difference: a caption holding another line terminator ("\\r",
U+2028, ...) keeps its tokens, where pycocoevalcap would shift every later caption by a line.

Provenance: the rules, abbreviation lists and character classes follow CoreNLP 3.4.1's
PTBLexer.flex (Stanford NLP, GPL v2 or later), rewritten in Python and checked against the jar's
output (tests/evaluation/golden/).
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from typing import Callable, Sequence

# pycocoevalcap's PUNCTUATIONS. Compared with lower-cased tokens, so "-lrb-", "-rrb-", "-lcb-",
# "-rcb-", "-lsb-" and "-rsb-" stay.
PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
                         ",", ":", "-", "--", "...", ";"])

# ---------------------------------------------------------------------------- character classes
# BMP letters and digits that came after the lexer's Unicode 6.3 (found by running it on every BMP
# character); U+1885 and U+1886 were letters then.
_UNICODE_7_AND_LATER = re.compile(
    "[\u037F\u0528-\u052F\u0560\u0588\u05EF\u0860-\u088E\u08A1\u08AD-\u08C9\u0978\u0980\u09FC"
    "\u0AF9\u0C34\u0C5A-\u0C5D\u0C80\u0CDD\u0D04\u0D54-\u0D5F\u0DE6-\u0DEF\u0E86\u0E89\u0E8C"
    "\u0E8E-\u0E93\u0E98\u0EA0\u0EA8-\u0EA9\u0EAC\u13F5-\u13FD\u16F1-\u16F8\u170D\u171F\u1878"
    "\u191D-\u191E\u19B0-\u19C0\u19C8-\u19C9\u1B4C\u1C80-\u1CBF\u1CF2-\u1CF3\u1CFA\u2C2F\u2C5F"
    "\u312E-\u312F\u31BB-\u31BF\u4DB6-\u4DBF\u9FCD-\u9FFF\uA698-\uA69D\uA78F\uA794-\uA79F"
    "\uA7AB-\uA7F7\uA8FD-\uA8FE\uA9E0-\uA9FE\uAA7E-\uAA7F\uAB30-\uABBF]")
# What the lexer's LETTER adds to [:letter:] (marks and the like).
_LETTER_EXTRA = (
    "\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384"
    "\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F"
    "\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670"
    "\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5"
    "\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4"
    "\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83"
    "\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56"
    "\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD")


def _is_letter(ch: str) -> bool:
  """[:letter:], Java's Character.isLetter in Unicode 6.3."""
  return (ch.isalpha() and not _UNICODE_7_AND_LATER.match(ch)) or ch in "\u1885\u1886"


def _is_digit(ch: str) -> bool:
  """[:digit:], Character.isDigit in Unicode 6.3."""
  return unicodedata.category(ch) == "Nd" and not _UNICODE_7_AND_LATER.match(ch)


def _class(predicate: Callable[[str], bool], extra: str = "") -> str:
  """A regex character class: the BMP characters satisfying `predicate`, and `extra`."""
  ranges, start = [], None
  for code in range(0x10001):
    inside = code < 0x10000 and not 0xD800 <= code < 0xE000 and predicate(chr(code))
    if inside and start is None:
      start = code
    elif not inside and start is not None:
      ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(code - 1))) * (code - 1 > start))
      start = None
  return "[" + "".join(ranges) + extra + "]"


def _caseless(pattern: str) -> str:
  """JFlex's %caseless: ASCII letters outside character classes match either case."""
  out, i, in_class = [], 0, False
  while i < len(pattern):
    ch, width = pattern[i], 1
    if ch == "\\":
      width = {"u": 6, "x": 4}.get(pattern[i + 1], 2)
      ch = pattern[i:i + width]
    elif ch in "[]":
      in_class = ch == "["
    elif ch.isascii() and ch.isalpha() and not in_class:
      ch = f"[{ch.lower()}{ch.upper()}]"
    out.append(ch)
    i += width
  return "".join(out)


_C = _caseless
_LET = _class(_is_letter)  # [:letter:]
_DIGIT = _class(_is_digit)
_ALNUM = _class(lambda ch: _is_letter(ch) or _is_digit(ch))
_ENTITY_LETTER = "&[aeiouAEIOU]" + _C("(?:acute|grave|uml);")
_LETTER = f"(?:{_class(_is_letter, _LETTER_EXTRA)}|{_ENTITY_LETTER})"
_LETTER_DIGIT = (f"(?:{_class(lambda ch: _is_letter(ch) or _is_digit(ch), _LETTER_EXTRA)}"
                 f"|{_ENTITY_LETTER})")

# --------------------------------------------------------------------------- the lexer's macros
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACENL = rf"(?:{_SPACE}|\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|{_NAME}(?:[ ]+(?:{_NAME}[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")"
         rf"|{_NAME}))*[ ]*/?|/{_NAME})[ ]*>")
_WORD = rf"{_LETTER}{_LETTER_DIGIT}*(?:[.!?]{_LETTER}{_LETTER_DIGIT}*)*"
_APOS = "(?:['\u0092\u2019]|" + _C("&apos;)")
_APOSETC = "(?:['\u0092\u2019`\u0091\u2018\u201B]|" + _C("&apos;)")
_THING_PART = rf"(?:[dDoOlL]{_APOSETC}{_ALNUM})?{_ALNUM}+"
_THING = rf"{_THING_PART}(?:[\-_\u058A\u2010\u2011]{_THING_PART})*"
_THINGA = rf"[A-Z]+(?:(?:[+&]|{_C('&amp;')})[A-Z]+)+"
_ACRO_SPECIAL = _C(r"U\.S\.-(?:U\.K|U\.S\.S\.R)|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S")
_ACRO = rf"(?:{_ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])*)"
_HTHING = (rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*"
           rf"(?:-(?:(?:{_ACRO_SPECIAL}|[A-Za-z](?:\.[A-Za-z])+)\.|[A-Za-z0-9\u00AD]+))+")
_REDAUX = _APOS + _C("(?:[msdMSD]|re|ve|ll)")
_SREDAUX = _C("n") + _APOSETC + _C("t")
_APOWORDS = [  # The alternatives of APOWORD, each a rule so that the longest wins.
    _APOS + _C("n") + _APOS + "?", f"[lLdDjJ]{_APOS}", _C("(?:Dunkin|somethin|ol)") + _APOS,
    _APOS + _C("em"), rf"[A-HJ-XZn]{_APOSETC}{_LET}{{2}}{_LET}*", _APOS + "[2-9]0" + _C("s"),
    _APOS + _C("till?"), rf"{_LET}+[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LET}*", _APOS + _C("cause"),
    _C(r"cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"),
    _C("O") + _APOSETC + _C("o")]
_URL_END = r"[^ \t\n\f\r\"<>|.!?(){},\-]"
_URL_PATH = rf"(?:/[^ \t\n\f\r\"<>|()]+{_URL_END})?"
_URLS = [_C("https?") + rf"://[^ \t\n\f\r\"<>|(){{}}]+{_URL_END}",
         _C("www") + rf"\.(?:[^ \t\n\f\r\"<>|.!?(){{}},]+\.)+[a-zA-Z]{{2,4}}{_URL_PATH}",
         rf"(?:[^ \t\n\f\r\"`'<>|.!?(){{}},-_$]+\.)+{_C('(?:com|net|org|edu)')}{_URL_PATH}"]
_EMAIL_PART = r"[^ \t\n\f\r\"<>|(){}.\u00A0]+"
_EMAIL = (_C("(?:&lt;|<)?") + rf"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{{}}]*@(?:{_EMAIL_PART}\.)*"
          + _EMAIL_PART + _C("(?:&gt;|>)?"))
_ABBREV1 = _C(
    r"(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri|Ala|"
    r"Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|"
    r"Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo|"
    r"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|"
    r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq|etc|al|seq|Bldg)\.")
_ABBREV4 = _C(
    r"(?:Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|"
    r"Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|"
    r"Ens|Insp|Mlle|Mme|Msgr|Sfc|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|Invt|Elec|Natl|M[ft]g|Dept|"
  ) + _ACRO + ")"
_SENTENCE_START = _C(
    r"(?:[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|"
    r"[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne|"
    r"[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|"
    r"[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou|") + _SGML + ")"
_PHONE_SEP = r"[\- \u00A0]"
_PHONE = (rf"(?:\([0-9]{{2,3}}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{{2,4}}{_PHONE_SEP})?[0-9]{{2,4}}"
          rf"{_PHONE_SEP})[0-9]{{3,4}}{_PHONE_SEP}?[0-9]{{3,5}}"
          r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
_FILENAME = rf"{_LETTER_DIGIT}+(?:\.{_LETTER_DIGIT}+)*\." + _C(
    r"(?:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|"
    r"php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)")
_QUOTES = ("[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A"
           "\u00AB\u00BB]{1,2}|''|" + _APOS)
_DBLQUOT = _C('(?:"|&quot;)')
_TBSPEC = _C(r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls"
             r"|Cap(?:['\x92\u2019]|&apos;)n|c(?:['\x92\u2019]|&apos;)est")
# The first alternative as the lexer has it: a literal "[^x=~<>]" after the period.
_ASIANSMILEY = (r"[\^x=~<>]\.\[\^[xX]=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']"
                r"|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)")
_MISCSYMBOL = (
    "[+%&~^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7"
    "\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E"
    "\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023"
    "\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF"
    "\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
_INSENTP = r"[,;:\u3001]"

# -------------------------------------------------------------------------------------- actions

_Action = Callable[[str], tuple[str | None, int]]  # matched text -> (token or None, chars consumed)


def _emit(transform: Callable[[str], str | None] = str, give_back: int = 0) -> _Action:
  """The action making the token transform(text) of the text but its last `give_back` characters,
  which are lexed again (JFlex's yypushback: "cannot" -> "can", then "not")."""
  return lambda text: (transform(text[:len(text) - give_back]), len(text) - give_back)


def _acronym(text: str):
  """An acronym before a sentence start: "U.S." stays whole, one letter loses its period ("I." ->
  "I"); the period is lexed again."""
  return (text[:-1], 1) if len(text) == 2 else (text, len(text) - 1)


def _latex_quotes(text: str, left: bool = False) -> str:
  """The lexer's quotes: ' and " become ` and `` (`left`) or ' and '', curly ones ` `` ' ''."""
  for pattern, quote in [("&apos;|'", "`" if left else "'"), ('"|&quot;', "``" if left else "''"),
                         ("[\u0091\u2018\u201B\u2039]", "`"), ("[\u0092\u2019\u203A]", "'"),
                         ("[\u0093\u201C\u00AB]", "``"), ("[\u0094\u201D\u00BB]", "''")]:
    text = re.sub(pattern, quote, text)
  return text


_FRACTIONS = str.maketrans({"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3",
                            "\u2154": "2/3"})
_CURRENCY = str.maketrans({"\u00A2": "cents", "\u00A3": "#",
                           **dict.fromkeys("\u0080\u00A4\u20A0\u20AC", "$")})
_PARENS = str.maketrans({"(": "-LRB-", ")": "-RRB-"})
_DROP = _emit(lambda text: None)
_SOFT_HYPHENS = _emit(lambda text: text.replace("\u00AD", "") or "-")  # Soft hyphens removed.
_AMP = _emit(lambda text: re.sub("(?i:&amp;)", "&", text))
_NBSP = _emit(lambda text: text.replace(" ", "\u00A0"))  # The token's spaces made non-breaking.
_BRACKETS = _emit(lambda text: text.translate(_PARENS))
_RIGHT_QUOTES = _emit(_latex_quotes)

# ---------------------------------------------------------------------------------------- rules
# (pattern, trailing context or None, action), in the lexer's order of priority.
_RULES = [
    (_C(r"c\+\+|(?:c|f)#"), None, _emit()),
    (_C("cannot"), None, _emit(give_back=3)),
    (_C("'twas"), None, _emit(give_back=3)),
    (_C("'tis|gonna|gotta|lemme|gimme|wanna"), None, _emit(give_back=2)),
    (_SGML, None, _NBSP),
    (_C("&(?:MD|mdash|ndash);") + "|[\u0096\u0097\u2013\u2014\u2015]", None,
     _emit(lambda text: "--")),
    (_C("&amp;"), None, _AMP),
    (_C("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"), None, _emit()),
    (_WORD, _REDAUX, _SOFT_HYPHENS),
    (r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*", _SREDAUX, _SOFT_HYPHENS),
    (_WORD, None, _SOFT_HYPHENS),
    *[(apoword, None, _emit()) for apoword in _APOWORDS],
    (_C("y") + _APOS, _LET, _emit()),
    *[(url, None, _emit()) for url in _URLS],
    (_EMAIL, None, _emit()),
    (rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_LETTER}+", None, _emit()),
    (_REDAUX, "[^A-Za-z]", _RIGHT_QUOTES),
    (_SREDAUX, "[^A-Za-z]", _RIGHT_QUOTES),
    (rf"{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{2,4}}", None, _emit()),
    (rf"[\-+]?(?:{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+|{_DIGIT}+)", None,
     _SOFT_HYPHENS),
    ("[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)",
     None, _emit()),
    (rf"(?:{_DIGIT}{{1,4}}[\- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}", None,
     _NBSP),
    ("[\u00BC\u00BD\u00BE\u2153-\u215E]", None, _emit(lambda text: text.translate(_FRACTIONS))),
    (_TBSPEC, None, _AMP),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, _emit()),
    (r"[A-Z]*\$|#", None, _emit()),
    ("[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", None,
     _emit(lambda text: text.translate(_CURRENCY))),
    (_ACRO + r"\.", rf"{_SPACENL}+{_SENTENCE_START}{_SPACENL}", _acronym),
    (_C(r"(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."), rf"{_SPACENL}?{_DIGIT}", _emit()),
    (_C(r"(?:pt[eyEY]|co)\."), _SPACE + _C("(?:ltd|lim)"), _emit()),
    # The lexer's rules ABBREV1/SENTEND and ABBREV1 at the end also give a "." token, dropped later.
    (_ABBREV1, r"[\s\S]{2}", _emit()),
    (_ABBREV1, None, _emit()),
    (_ABBREV4 + r"\.", None, _emit()),
    (_ABBREV4, _SPACE, _emit()),
    (_ACRO, _SPACENL, _emit()),
    (_APOS + "[0-9][0-9]", _SPACENL, _emit()),
    (_FILENAME, rf"(?:{_SPACENL}|[.?!,])", _emit()),
    (_WORD + r"\.", _INSENTP, _SOFT_HYPHENS),
    (_PHONE, None, _emit(lambda text: text.replace(" ", "\u00A0").translate(_PARENS))),
    (_DBLQUOT, "[A-Za-z0-9$]", _emit(lambda text: _latex_quotes(text, left=True))),
    (_DBLQUOT, None, _RIGHT_QUOTES),
    (_C("<|&lt;"), None, _emit(lambda text: "<")),
    (_C(">|&gt;"), None, _emit(lambda text: ">")),
    (r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]", "[^A-Za-z0-9]", _BRACKETS),
    (_ASIANSMILEY, None, _BRACKETS),
    *[(re.escape(bracket), None, _emit(lambda text, token=token: token))
      for bracket, token in zip("{}[]()", ("-LCB-", "-RCB-", "-LSB-", "-RSB-", "-LRB-", "-RRB-"))],
    ("-+", None, _emit(lambda text: "--" if 3 <= len(text) <= 4 else text)),
    (r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\x85\u2026]", None, _emit(lambda text: "...")),
    (r"@+|#+|_+|\*+|(?:\\\*){1,3}", None, _emit()),
    (_INSENTP, None, _emit()),
    (r"[?!]+", None, _emit()),
    ("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002=/]", None, _emit()),
    (_HTHING + r"\.", _INSENTP, _SOFT_HYPHENS),
    (_HTHING, None, _SOFT_HYPHENS),
    (_THING + r"\.", _INSENTP, _emit()),
    (_THING, None, _emit()),
    (_THINGA + r"\.", _INSENTP, _AMP),
    (_THINGA, None, _AMP),
    ("'", r"[A-Za-z][^ \t\n\r\u00A0]", _emit(lambda text: _latex_quotes(text, left=True))),
    (_REDAUX, None, _RIGHT_QUOTES),
    (_SREDAUX, None, _RIGHT_QUOTES),
    (_QUOTES, None, _RIGHT_QUOTES),
    ("<<|>>", None, _emit()),
    (_MISCSYMBOL, None, _emit()),
    # Spaces, line ends (the batch's captions are told apart by position), and untokenisable
    # characters (any other) make no token.
    (rf"{_SPACE}+|\r\n|[\u200B\u200E\u200F\uFEFF]|{_C('&nbsp;')}|[\s\S]", None, _DROP),
]
# One pass tries every rule at a position: rule i's match is group r{i}, its text group t{i}.
_SCANNER = re.compile("".join(f"(?:(?=(?P<r{i}>(?P<t{i}>{p}){context or ''}))|)"
                              for i, (p, context, _) in enumerate(_RULES)))
_GROUPS = [(_SCANNER.groupindex[f"r{i}"], _SCANNER.groupindex[f"t{i}"], action)
           for i, (_, _, action) in enumerate(_RULES)]
# A shortcut with the rules' outcome: spaces from an ASCII space or tab on make no token (no other
# rule starts with those), and ASCII letters before an ASCII space or a line end make a token of
# their own (no rule reads on across the space), but for the words split by assimilation.
_PLAIN = re.compile(rf"[ \t]{_SPACE}*|([A-Za-z]+)(?=[ \n]|\Z)")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _lex(units: str):
  """(start, token or None) for the tokens of `units`, a string of UTF-16 code units."""
  pos = 0
  while pos < len(units):
    plain = _PLAIN.match(units, pos)
    if plain and (plain[1] or "").lower() not in _ASSIMILATIONS:
      yield pos, plain[1]
      pos = plain.end()
      continue
    spans = _SCANNER.match(units, pos).regs
    best_end, best = pos, None
    for whole, text, action in _GROUPS:
      if spans[whole][1] > best_end:
        best_end, best = spans[whole][1], (spans[text], action)
    (start, end), action = best
    token, consumed = action(units[start:end])
    yield pos, token
    pos += consumed

# --------------------------------------------------------------------------------- Java's output


def _utf16_units(text: str) -> str:
  """`text` with each character beyond U+FFFF as its two surrogates, as Java holds it."""
  if max(text, default="\0") <= "\uffff":
    return text
  return "".join(c if c <= "\uffff" else chr(0xD7C0 + (ord(c) >> 10)) + chr(0xDC00 + ord(c) % 1024)
                 for c in text)


def _is_cased(ch: str) -> bool:
  """java.lang.ConditionalSpecialCasing.isCased."""
  return unicodedata.category(ch) in ("Lu", "Ll", "Lt") or bool(re.match(
      "[\u02B0-\u02B8\u02C0\u02C1\u02E0-\u02E4\u0345\u037A\u1D2C-\u1D61\u2160-\u217F"
      "\u24B6-\u24E9]", ch))


@functools.cache
def _java_word() -> re.Pattern:
  """A word as java.text.BreakIterator.getWordInstance keeps it together: letters and numbers with
  inner dashes, apostrophes, quotes or periods (commas in numbers), and a number suffix."""
  marks = _class(lambda ch: unicodedata.category(ch) in ("Mn", "Me")) + "*"
  kana_kanji = "\u3005\u3041-\u3094\u3099-\u309e\u30a1-\u30fe\u4e00-\u9fa5\uf900-\ufa2d"
  letter = "(?:" + _class(lambda ch: (ch.isalpha() or unicodedata.category(ch) == "Mc")
                         and not re.match(f"[{kana_kanji}]", ch)) + marks + ")"
  digit = "(?:" + _class(lambda ch: unicodedata.category(ch)[0] == "N") + marks + ")"
  mid_word = _class(lambda ch: unicodedata.category(ch) in ("Pd", "Pc"), "\u00ad\u2027\"'.")
  word = f"{letter}+(?:{mid_word}{letter}+)*[\u0964\u0965]?"
  number = f"{digit}+(?:[\"',\u066b.]{digit}+)*"
  return re.compile(f"(?:{word})?(?:{number}{word})*(?:{number}[%&\u00a2\u066a\u2030\u2031]?)?")


def _java_lower(text: str) -> str:
  """Java's String.toLowerCase(Locale.ENGLISH): str.lower, but a capital sigma is final (ς) when a
  cased letter precedes it and none follows it in its word."""
  if "\u03a3" not in text:
    return text.lower()
  out, pos = [], 0
  while pos < len(text):
    word = text[pos:max(_java_word().match(text, pos).end(), pos + 1)]
    out += ["\u03c2" if ch == "\u03a3" and any(map(_is_cased, word[:i]))
            and not any(map(_is_cased, word[i + 1:])) else ch.lower() for i, ch in enumerate(word)]
    pos += len(word)
  return "".join(out)


def _output(token: str) -> str:
  """A token as the tokenizer prints it: lower case, in UTF-8 (a lone surrogate becomes "?")."""
  text = token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
  return re.sub("[\ud800-\udfff]", "?", _java_lower(text))

# --------------------------------------------------------------------------------------- public


def tokenize_captions(captions: Sequence[str]) -> list[str]:
  """The captions as pycocoevalcap's PTBTokenizer tokenises them in one call, in this order: lower
  case, tokens separated by single spaces, PUNCTUATION dropped.
  ["A man's T-shirt (red)."] -> ["a man 's t-shirt -lrb- red -rrb-"]."""
  texts = [_utf16_units(c.replace("\n", " ")) for c in captions]
  starts = [0]
  for text in texts[:-1]:
    starts.append(starts[-1] + len(text) + 1)
  lines = [[] for _ in texts]
  for start, token in _lex("\n".join(texts)):
    if token is not None:
      lines[bisect.bisect_right(starts, start) - 1].append(_output(token))
  return [" ".join(w for w in " ".join(line).rstrip().split(" ") if w not in PUNCTUATION)
          for line in lines]


def tokenize_caption(text: str) -> str:
  """One caption tokenised alone (as a batch's last): "A dog's ball." -> "a dog 's ball"."""
  return tokenize_captions([text])[0]
