"""Recomputes the expected VQA accuracies of tests/evaluation/test_metrics.py's VQA_CASES with the official code.

The official evaluation is Python 2 and not on PyPI, so the tests hold its outputs. To recompute:

  git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA && git -C /tmp/VQA checkout a013f00
  sed -e 's/print "\\(.*\\)"/print("\\1")/' /tmp/VQA/PythonEvaluationTools/vqaEvaluation/vqaEval.py \
      > /tmp/vqaEval.py
  PYTHONPATH=/tmp:. python tests/evaluation/vqa_reference_values.py

It prints one expected accuracy (percent) per case, as VQAEval.evaluate stores them in evalQA.
"""

from tests.evaluation.golden.vqa_official import official_accuracies  # Imports vqaEval (above).
from tests.evaluation.test_metrics import VQA_CASES


def main():
  print(official_accuracies([(prediction, answers) for prediction, answers, _ in VQA_CASES]))


if __name__ == "__main__":
  main()
