"""Writes the golden files of the COCO caption evaluation's tokenisation and CIDEr-D, made with the
real thing: pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1's Java PTBTokenizer, options
-preserveLines -lowerCase, punctuation tokens dropped) and its Cider scorer.

  .venv/bin/python tests/evaluation/golden/make_ptb_golden.py   # needs Java; a few seconds

Outputs (committed; tests/evaluation/test_metrics.py reads them without Java):
* ptb_captions.json: {"captions": [...], "tokens": [...]}, the tokenizer's output for each caption,
  all tokenised in one call in this order (the Java lexer looks ahead across caption ends). 6,948
  seeded captions (`captions`: the hard cases alone and in a sentence, COCO-style captions with them
  put in or glued on, hard cases glued together, abbreviations before the words the lexer looks
  ahead to, noise, long captions), then 731 that sweep the BMP (`unicode_sweep`).
* cider_d.json: the 6,948 captions, each 6 in a row an image (5 references, then the candidate;
  `images`), tokenised as COCOEvalCap.evaluate does (references in one call, candidates in another)
  and scored by Cider: {"references_per_image": 5, "images": 1158, "score": corpus, "scores": [per
  image]}.

Captions hold no line terminator other than "\\n" (the wrapper replaces "\\n" by a space; "\\r",
U+2028 and the like would give extra output lines and shift every later caption)."""

import json
import pathlib
import random
import unicodedata

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

OUT = pathlib.Path(__file__).resolve().parent
SEED = 14
REFS_PER_IMAGE = 5
JAVA_LINE_BREAKS = "\r\x0b\x0c\u2028\u2029"

SUBJECTS = [
    "A man", "A woman", "Two dogs", "A group of people", "An elderly couple", "A young boy",
    "The cat", "Several zebras", "A plate of food", "A red double decker bus", "a little girl",
    "Three giraffes", "A black and white photo of a train", "The kitchen", "A surfer",
    "An airplane", "Some sheep", "A baseball player", "a bowl of fruit", "Two teddy bears",
    "A police officer", "This bathroom", "A herd of elephants", "People", "A skier", "A laptop",
    "The toilet", "An orange cat",
]
VERBS = [
    "is riding", "sitting on", "standing next to", "playing with", "holding", "eating",
    "walking down", "looking at", "parked near", "flying over", "is cutting", "lying on",
    "waiting for", "has", "with", "in front of", "throwing", "swinging at", "covered in",
    "on top of",
]
OBJECTS = [
    "a skateboard", "a bench", "the street", "a frisbee", "a pizza", "a kite",
    "a large clock tower", "the beach", "a laptop computer", "a grassy field", "a wave", "a bat",
    "some broccoli", "the snow", "a sink", "a traffic light", "a fire hydrant", "an umbrella",
    "a cake with candles", "the runway",
]
TAILS = ["", "", "", " in the park", " on a sunny day", " while it rains", " at night",
         " next to a fire hydrant", " in a kitchen", " near the water", " on the side of the road"]
ENDINGS = ["", "", ".", ".", ".", " .", "!", "...", " ", "?", ". ", "  .", "\t"]

# The hard cases, by kind. Each appears alone, inside sentences and glued to others.
HARD = {
    "hyphens": [
        "t-shirt", "T-shirt", "black-and-white", "double-decker", "state-of-the-art", "x-ray",
        "e-mail", "co-ed", "pro-choice", "anti-war", "self-driving", "3-year-old", "5-star",
        "well--known", "a--b", "mid-1990s", "U.S.-based", "hot-dog-like", "re-enter", "man-made",
        "long-haired", "hi-fi", "Wi-Fi", "follow-up", "t_shirt", "A-B-C", "1-2", "10-15", "F-16",
        "Route-66", "-5", "+3", "high-end.", "pro-", "anti-", "dog-", "-dog", "a-", "ice-cream,",
        "non-U.S", "Sino-U.S", "U.S.-U.K", "x-", "o-ring", "Mother-in-law's", "first-class",
        "twenty-one", "New York-based", "hand-held.", "T-shirts;", "e-mail:",
    ],
    "decimals": [
        "3.5", "0.75", ".5", "3.", "1.2.3", "3.14159", "-2.5", "+1.5", "2.5x", "v2.0", "1.5-inch",
        "3.5mm", "$3.50", "12.5%", "10.000", "0.5.", "3.5,", "1.", "99.9%", "4.0L", "2.5-3.5",
    ],
    "thousands": [
        "1,000", "10,000,000", "1,00", "1,000.50", "100,000", "1,2,3", "9,999th", "1,000s",
        "2,500m", "1,000,", "3,4", ",5",
    ],
    "abbreviations": [
        "U.S.", "U.S", "u.s.", "U.S.A.", "U.K.", "Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Ave.",
        "e.g.", "i.e.", "a.m.", "p.m.", "A.M.", "etc.", "vs.", "Inc.", "Co.", "Ltd.", "Jr.",
        "Ph.D.", "Jan.", "Sept.", "Calif.", "fig. 3", "Fig.3", "No. 5", "no. 5", "nos. 5",
        "ca. 1900", "approx.", "Mt. Fuji", "Pty. Ltd", "Co. Ltd", "a.k.a.", "N.Y.C.", "D.C.",
        "L.A.", "I.", "Z.", "A.", "Wash.", "Miss.", "Gen.", "Prof.", "Sgt.", "Corp.", "Bros.",
        "Blvd.", "Rd.", "Esq.", "al.", "et al.", "vs", "cf.", "Mon.", "Fri.", "Oct.", "Dec.",
        "Ore.", "Tex.", "TV.", "Inc.,", "U.S.;", "p.m.,", "etc.,", "art. 5", "op. cit.", "Wm.",
        "Alex.", "Capt.", "Ft.", "ext. 5", "tel. 5", "sq. ft.", "Dept.", "Mfg.", "a.m", "Ph. D",
    ],
    "times": [
        "10:30", "10:30am", "10:30 a.m.", "5:45pm", "12:00:00", "3:1", "1:30:45", "24:00", "9:00.",
        "10.30", "7pm", "10:30-11:00", "8:00AM", "noon:", "2:1,",
    ],
    "slashes": [
        "and/or", "he/she", "his/her", "w/", "w/o", "1/2", "3/4", "1 1/2", "5 3/4", "10/20/2015",
        "2015/10/20", "12-25-2019", "a/b/c", "A/C", "on/off", "/", "//", "24/7", "50/50",
        "left/right", "km/h", "and/or/not", "10/20", "1/2/3/4", "\\/", "a\\/b", "1\u20442", "x/",
        "/x",
    ],
    "quotes": [
        "don\u2019t", "can\u2019t", "won\u2019t", "it\u2019s", "I\u2019m", "they\u2019re",
        "we\u2019ll", "she\u2019d", "you\u2019ve", "dog\u2019s", "dogs\u2019", "\u2018hello\u2019",
        "\u201chello\u201d", "\u201cStop\u201d", "\u2018tis", "\u2019tis", "o\u2019clock",
        "rock \u2019n\u2019 roll", "rock 'n' roll", "'90s", "\u201990s", "the '80s", "in '99",
        "\u201890", "\u00abbonjour\u00bb", "\u2039x\u203a", "\u201equote\u201c", "\u201ax\u2018",
        "\u201bx", "\u201fx", "don't", "can't", "won't", "it's", "I'm", "they're", "we'll",
        "she'd", "you've", "Y'all", "y'know", "'em", "'til", "'till", "'cause", "ma'am", "ol'",
        "li'l", "nat'l", "c'mon", "e'er", "s'mores", "ev'ry", "cont'd", "cont'd.", "nor'easter",
        "somethin'", "Dunkin'", "Shi'ite", "O'Brien", "L'Oreal", "d'ye", "D'Angelo", "j'accuse",
        "Cap'n", "c'est", "isn't", "ISN'T", "Don'T", "dont", "don`t", "don\u2018t", "n't", "'s",
        "'S", "'RE", "it\u2019S", "dogs'", "James'", "''", "``", "`", "'", "``quoted''",
        "''hello''", "'quoted'", "\"quoted\"", "\"", "\"A", "&quot;x&quot;", "&apos;s",
        "it&apos;s", "O\u2019o", "rock'n'roll", "'n", "'n'", "'tis", "'Tis", "'twas", "'Twas",
        "who'd've", "y'all'd", "'s.", "' s", "the 'dog'", "he said 'hi", "'A", "don\u0092t",
        "\u0093hi\u0094", "\u0091x\u0092", "''''", "'''", "\u201c\u201c", "\u2019\u2019",
        "Jones'.", "'5", "'50", "'50s", "o'clock", "rock 'n roll", "I'd", "we'd've", "can'",
        "mustn't", "needn't", "ain't", "Ain't", "AREN'T", "shouldn't've", "y'", "Y\u2019all",
    ],
    "assimilations": [
        "cannot", "Cannot", "CANNOT", "gonna", "Gonna", "GONNA", "gotta", "wanna", "lemme",
        "gimme", "gonnaa", "cannots", "cannot's", "wannabe", "gimme!", "gotta,", "cannot.",
        "gonna-be",
    ],
    "brackets": [
        "(red)", "( red )", "(a)", "[sic]", "{x}", "<b>", "</b>", "<br/>", "<br />",
        "<a href=\"x\">", "<a href='y z'>", "<", ">", "<<", ">>", "(1)", "((nested))", ")(", "[1]",
        "{}", "-LRB-", "-rrb-", "-LCB-", "-RSB-", "<!DOCTYPE html>", "<?xml version>", "< b >",
        "<b", "b>", "a<b", "a>b", "&lt;", "&gt;", "&lt;b&gt;", "(", ")", "[", "]", "{", "}", "(c)",
        "(TM)",
    ],
    "phones": [
        "(555) 123-4567", "555-1234", "555-123-4567", "+1 555 123 4567", "555.123.4567",
        "(02) 1234 5678", "+44 20 7946 0958", "123-4567", "(555)123-4567", "1-800-555-1234",
    ],
    "dashes": [
        "--", "---", "----", "-----", "\u2014", "\u2013", "\u2015", "a\u2014b", "dog\u2013cat",
        "1\u20132", "&mdash;", "&ndash;", "&MD;", "\u2010", "\u2011", "-", "- ", "\u2012",
        "a\u2010b", "a\u2011b", "\u058a", "\u0096", "\u0097", "word\u2014word", "2000\u20132010",
        "-- --", "a---b", "------", "-x-",
    ],
    "ellipses": [
        "...", "\u2026", ". . .", "....", ".....", "......", "wait...", "dog\u2026cat", "..",
        ". .", "\u0085", ". . . .", ".\u00a0.\u00a0.", "....,", "a...b", "1...2", "?...", "!..",
    ],
    "symbols": [
        "\U0001f600", "\U0001f436", "\U0001f44d\U0001f3fd", "\u2764\ufe0f", "\u263a", "\u2713",
        "\u2605", "\u2665", "\U0001f1fa\U0001f1f8", "dog\U0001f600", "\U0001f600dog",
        "\U0001f600\U0001f600", "\u00a9", "\u00ae", "\u2122", "\u00b0", "\u00b1", "\u00d7",
        "\u00f7", "\u00a7", "\u00b6", "\u2022", "\u00b7", "\u00a6", "\u00a8", "\u00af", "&", "A&W",
        "AT&T", "R&B", "S&P", "S&P-500", "S&Ls", "&amp;", "AT&amp;T", "Tom & Jerry", "rock&roll",
        "&nbsp;", "&HT;", "&#39;", "&eacute;", "caf&eacute;", "c++", "C++", "C#", "f#", "x+y",
        "a+b", "=", "a=b", "~", "^", "|", "\\", "*", "**", "***", "\\*", "\\*\\*", "_", "__", "@",
        "@@", "#", "##", "%", "!!", "?!", "!?", "???", "\u00a1Hola!", "\u00bfQu\u00e9?", ":", ";",
        ",", ":)", ":-)", ";)", ":(", ":D", ":P", "=)", ":-/", "^_^", "o_o", "T_T", "(^_^)", "x.x",
        ">:(", "<3", ":'(", ":o)", ":]", "\u3001", "\u3002", "\u00b2", "\u00b3", "x\u00b2",
        "H\u2082O", "\u2116", "\u2113", "\u2192", "\u2264", "\u221e", "\u20ac", "\u00a3", "\u00a5",
        "\u00a2", "\u20b9", "\u0080", "\u00a4", "\x7f", "\x00", "\u200b", "\u200e", "\ufeff",
        "\u2044", "\u00bc", "\u00bd", "\u00be", "\u2153", "\u2154", "\u2155", "\u215e", "\u2070",
        "\u207a\u00b2", "\u2081\u2082", "\ufe0f", "\u0301", "\u02bc", "\u2032", "\u2033", "\u00b4",
        "\u02dc", "\uff01", "\uff08", "\u30fb", "\u2020", "\u2030", "\u2190", "\u2500", "\u25a0",
        "\u2600", "\u2b50", "\ue000",
    ],
    "letters": [
        "caf\u00e9", "na\u00efve", "r\u00e9sum\u00e9", "Z\u00fcrich", "S\u00e3o Paulo",
        "\u00c6r\u00f8sk\u00f8bing", "stra\u00dfe", "STRASSE", "\u0130stanbul",
        "\u039f\u0394\u039f\u03a3", "\u041c\u043e\u0441\u043a\u0432\u0430", "\u5317\u4eac",
        "\u6771\u4eac\u30bf\u30ef\u30fc", "\uc11c\uc6b8", "\u05e2\u05d1\u05e8\u05d9\u05ea",
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0939\u093f\u0928\u094d\u0926\u0940",
        "\u0e44\u0e17\u0e22", "\u0395\u03bb\u03bb\u03ac\u03b4\u03b1", "fa\u00e7ade", "cafe\u0301",
        "\ufb01sh", "\uff26\uff55\uff4c\uff4c", "\uff11\uff12\uff13", "\u0663\u0664",
        "\u0966\u0967", "\U00020000", "\U0001d400\U0001d401", "\u00c9COLE", "\u0237", "\u01c5",
        "\u1e9e", "\u00df", "\u0149", "d\u00e9j\u00e0 vu", "pi\u00f1ata", "\u00e5ngstr\u00f6m",
        "\u0152uvre", "\u02c6", "\u0640", "\u00aa", "\u00ba", "\u3005", "\u00adsoft",
        "soft\u00adhyphen", "\u00ad", "\u0394x", "\u03bcm", "\u00b5m", "\u2160", "\u216b",
        "\u24b6", "\u0416\u0416\u0416", "\u0448\u0442\u0430\u0301",
    ],
    "numbers": [
        "2", "10", "100", "2nd", "1st", "3rd", "21st", "100th", "1990s", "1,000th", "#1", "No.1",
        "no1", "#hashtag", "#tbt", "@user", "@user_1", "A4", "4x4", "3D", "1080p", "50%", "100 %",
        "$5", "US$5", "US$", "C$10", "$", "5$", "\u00a310", "\u20ac20", "\u00a5100", "\u00a250",
        "+5", "-5", "5-", "1e10", "0x1F", "007", "2019", "'19", "1.5k", "#", "#5", "5#", "3x",
        "x3", "19-year-old", "1990-2000", "12/25", "2/3rds", "\u00bd-price", "10\u00bd",
        "5\u00a0000", "+-5", "--5", "1/", "1:", "1'", "1\"", "6'2\"", "5'10", "90\u00b0",
        "100\u00b0F", "1.5.",
    ],
    "web": [
        "http://www.example.com", "https://example.com/a/b?c=d&e=f.", "www.google.com",
        "google.com", "example.org/path", "foo@bar.com", "<foo@bar.com>", "&lt;foo@bar.com&gt;",
        "john.doe@mail.example.co.uk", "ftp://x.y", "example.net.", "cs.stanford.edu", "photo.jpg",
        "IMG_1234.JPG", "file.txt,", "index.html", "HTTP://EXAMPLE.COM", "www.x.com/", "a.b.c.com",
        "http://x.com/(y)", "http://a.b/c-", "www.abc.museum", "report.pdf!", "script.py?",
        "data.tar.gz", "1.jpg", "foo@bar", "user@localhost.", "http://", "https://t.co/xyz",
        "mailto:me@x.org", "Google.com", "ABC.NET", "x.edu/~user",
    ],
    "spaces": [
        " ", "  ", "\t", "\u00a0", "\u2009", "\u3000", "\u2003", "\u202f", "\u205f", "\u1680",
        " \t ", "\u00a0\u00a0", "\u200a",
    ],
}

TRICKY_FOLLOWERS = [
    "The", "A", "He", "It", "In", "However", "the", "a", "Mr.", "You", "3", "1990", "she", "That",
    "We", "About", "THE", "An", "Ms.", "Yet", "<b>", "Some", "Such",
]

NOISE_CHARS = (
    "abcxyzABCXYZnstdlmoOeEIU0123456789 .,;:!?'\"`-_/\\()[]{}<>@#$%^&*+=~|"
    "\u2019\u2018\u201c\u201d\u2014\u2013\u2026\u00a0\u00e9\u00df\u03a3\u4eac\u00bd\u00b2\u20ac"
    "\u00a3\u00ad\u2010\u0092\u0093"
)


def sentence(rng: random.Random, scene: tuple[str, str]) -> str:
  """A COCO-style caption of `scene` (subject, object)."""
  subject, obj = scene
  text = f"{subject} {rng.choice(VERBS)} {obj}{rng.choice(TAILS)}"
  case = rng.random()
  if case < 0.15:
    text = text.lower()
  elif case < 0.2:
    text = text.upper()
  elif case < 0.25:
    text = text.title()
  return text + rng.choice(ENDINGS)


def fragment(rng: random.Random) -> str:
  return rng.choice(HARD[rng.choice(sorted(HARD))])


def with_fragments(rng: random.Random, scene: tuple[str, str], count: int) -> str:
  """A sentence with `count` hard cases put between words, glued to a neighbour or punctuated."""
  words = sentence(rng, scene).split(" ")
  for _ in range(count):
    piece = fragment(rng)
    style = rng.random()
    if style < 0.15:
      piece = piece + rng.choice([".", ",", ";", ":", "!", "?", ")", "'", '"', "\u201d", "..."])
    elif style < 0.3:
      piece = rng.choice(["(", '"', "'", "\u201c", "\u2018", "[", "-", "$"]) + piece
    at = rng.randrange(len(words) + 1)
    if style > 0.9:  # Glued to the word before.
      words[max(at, 1) - 1] += piece
    else:
      words.insert(at, piece)
  return " ".join(words)


def glued(rng: random.Random) -> str:
  """Two to four hard cases with no space between them: the lexer's rule interactions."""
  return rng.choice(["", " "]).join(fragment(rng) for _ in range(rng.randint(2, 4)))


def noise(rng: random.Random) -> str:
  return "".join(rng.choice(NOISE_CHARS) for _ in range(rng.randint(1, 40)))


def abbreviation_then(rng: random.Random, scene: tuple[str, str]) -> str:
  """An abbreviation or single-letter acronym followed by a word the lexer looks ahead to."""
  abbrev = rng.choice(["U.S.", "U.K.", "Z.", "I.", "etc.", "Inc.", "p.m.", "fig.", "No.", "Mr.",
                       "Calif.", "Co.", "a.m.", "D.C.", "Jr.", "vs.", "St.", "x.", "A.", "Ph.D."])
  space = rng.choice([" ", "  ", "\t", "\u00a0", " \t", ""])
  return (f"{sentence(rng, scene).rstrip(' .!?')} {abbrev}{space}{rng.choice(TRICKY_FOLLOWERS)} "
          f"{rng.choice(OBJECTS)}")


def caption(rng: random.Random, scene: tuple[str, str]) -> str:
  """One caption of an image: mostly plain or with hard cases, sometimes odd or very long."""
  kind = rng.random()
  if kind < 0.4:
    return sentence(rng, scene)
  if kind < 0.75:
    return with_fragments(rng, scene, rng.randint(1, 3))
  if kind < 0.84:
    return glued(rng)
  if kind < 0.9:
    return abbreviation_then(rng, scene)
  if kind < 0.97:
    return noise(rng)
  if kind < 0.995:
    return "\n".join(sentence(rng, scene) for _ in range(3))  # "\n" becomes a space.
  return " ".join(with_fragments(rng, scene, 2) for _ in range(rng.randint(8, 40)))


def captions(rng: random.Random, num_images: int = 900) -> list[str]:
  """Every hard case alone and in a COCO-style sentence, then `num_images` images of captions that
  share a subject and an object; in groups of REFS_PER_IMAGE + 1 (`images`), groups shuffled."""
  singles = [piece for pieces in HARD.values() for piece in pieces]
  singles += [f"A man wearing a {piece} in the park." for piece in singles]
  singles += ["", " ", "\t", "   ", "\u00a0", ".", "\u2026", "a", "A", "I", "a."]
  size = REFS_PER_IMAGE + 1
  singles += [""] * (-len(singles) % size)
  groups = [singles[i:i + size] for i in range(0, len(singles), size)]
  for _ in range(num_images):
    scene = (rng.choice(SUBJECTS), rng.choice(OBJECTS))
    groups.append([caption(rng, scene) for _ in range(size)])
  rng.shuffle(groups)
  out = [text for group in groups for text in group]
  for text in out:
    assert not set(text) & set(JAVA_LINE_BREAKS), repr(text)
  return out


def unicode_sweep() -> list[str]:
  """Every assigned BMP character (in the big CJK and Hangul blocks every 61st) as "a{c}a 1{c}1", 24
  to a caption: which characters the lexer's tables count as letters and digits."""
  big_blocks = [(0x3400, 0x4DB5), (0x4E00, 0x9FCC), (0xAC00, 0xD7A3)]
  chars = [chr(c) for c in range(0x20, 0x10000)
           if chr(c) not in JAVA_LINE_BREAKS + "\n\x85"
           and unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")
           and not (any(a < c < b for a, b in big_blocks) and c % 61)]
  return [" ".join(f"a{c}a 1{c}1" for c in chars[i:i + 24]) for i in range(0, len(chars), 24)]


def tokenize(captions_by_id: dict) -> dict:
  """pycocoevalcap's PTBTokenizer (one Java call) on {id: [caption, ...]}."""
  captions = {k: [{"caption": c} for c in v] for k, v in captions_by_id.items()}
  return PTBTokenizer().tokenize(captions)


def images(texts: list[str]) -> tuple[dict, dict]:
  """Consecutive captions as images: ({id: 5 references}, {id: the next caption, the candidate})."""
  size = REFS_PER_IMAGE + 1
  groups = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
  return ({f"img{i}": g[:REFS_PER_IMAGE] for i, g in enumerate(groups)},
          {f"img{i}": g[REFS_PER_IMAGE] for i, g in enumerate(groups)})


def main():
  rng = random.Random(SEED)
  sentences = captions(rng)
  texts = sentences + unicode_sweep()
  tokens = tokenize({i: [c] for i, c in enumerate(texts)})
  golden = {"captions": texts, "tokens": [tokens[i][0] for i in range(len(texts))]}
  (OUT / "ptb_captions.json").write_text(json.dumps(golden, ensure_ascii=False, indent=0) + "\n")

  references, candidates = images(sentences)
  score, scores = Cider().compute_score(tokenize(references),
                                        tokenize({k: [c] for k, c in candidates.items()}))
  cider = {"references_per_image": REFS_PER_IMAGE, "images": len(references), "score": float(score),
           "scores": [float(s) for s in scores]}
  (OUT / "cider_d.json").write_text(json.dumps(cider, indent=0) + "\n")
  print(f"{len(texts)} captions ({len(sentences)} sentences), {len(references)} images, "
        f"CIDEr-D {score:.6f}")


if __name__ == "__main__":
  main()
