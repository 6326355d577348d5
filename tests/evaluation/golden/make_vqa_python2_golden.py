# -*- coding: utf-8 -*-
"""Writes vqa_non_ascii.json: the official VQA evaluation's accuracies on non-ASCII answers, run as
it was written, in Python 2 (GT-Vision-Lab/VQA at a013f00, PythonEvaluationTools/vqaEvaluation):

  git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA && git -C /tmp/VQA checkout a013f00
  PYTHONPATH=/tmp/VQA/PythonEvaluationTools/vqaEvaluation python2.7 \\
      tests/evaluation/golden/make_vqa_python2_golden.py

Answers are unicode, as the official code's json.load gives them. Each case differs between Python 2
and the same code run in Python 3 (but the last two): ASCII-only \\d in the period and comma rules,
and unicode.lower()'s simple case mapping ("İ" -> "i", no final sigma).
"""

import io
import json
import os

from vqa_official import official_accuracies  # Beside this script.

CASES = [  # (prediction, the ten human answers)
    (u"\u0663\u0665", [u"\u0663.\u0665"] * 5 + [u"\u0663\u0665"] * 2 + [u"3.5"] * 3),
    (u"\u0661\u0660\u0660\u0660",
     [u"\u0661,\u0660\u0660\u0660"] * 5 + [u"\u0661\u0660\u0660\u0660"] * 2 + [u"1000"] * 3),
    (u"istanbul", [u"\u0130stanbul"] * 6 + [u"istanbul"] + [u"turkey"] * 3),
    (u"\u03bf\u03b4\u03bf\u03c2", [u"\u039f\u0394\u039f\u03a3"] * 6 + [u"road"] * 4),
    (u"caf\u00e9", [u"Caf\u00e9"] * 4 + [u"caf\u00e9!"] * 3 + [u"cafe"] * 3),
    (u"don\u2019t know", [u"don\u2019t know"] * 3 + [u"dont know"] * 4 + [u"no"] * 3),
]


def main():
  accuracies = official_accuracies(CASES)
  out = [{"prediction": p, "answers": a, "accuracy": accuracy}
         for (p, a), accuracy in zip(CASES, accuracies)]
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vqa_non_ascii.json")
  lines = [json.dumps(case, ensure_ascii=False, sort_keys=True) for case in out]
  with io.open(path, "w", encoding="utf-8") as f:
    f.write(u"[\n" + u",\n".join(lines) + u"\n]\n")


if __name__ == "__main__":
  main()
