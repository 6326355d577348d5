"""Recomputes the expected VQA accuracies of tests/evaluation/test_metrics.py's VQA_CASES with the official code.

The official evaluation is Python 2 and not on PyPI, so the tests hold its outputs. To recompute:

  git clone https://github.com/GT-Vision-Lab/VQA /tmp/VQA && git -C /tmp/VQA checkout a013f00
  sed -e 's/print "\\(.*\\)"/print("\\1")/' /tmp/VQA/PythonEvaluationTools/vqaEvaluation/vqaEval.py \
      > /tmp/vqaEval.py
  PYTHONPATH=/tmp:. python tests/evaluation/vqa_reference_values.py

It prints one expected accuracy (percent) per case, as VQAEval.evaluate stores them in evalQA.
"""

from vqaEval import VQAEval  # The official module, made Python 3 as above.

from tests.evaluation.test_metrics import VQA_CASES


class _Questions:  # The two methods of the official VQA helper class that VQAEval uses.

  def __init__(self, qa):
    self.qa = qa

  def getQuesIds(self):  # noqa: N802 (the official name)
    return list(self.qa)


def main():
  gts = {i: {"answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)],
             "question_type": "t", "answer_type": "a"}
         for i, (_, answers, _) in enumerate(VQA_CASES)}
  res = {i: {"answer": prediction} for i, (prediction, _, _) in enumerate(VQA_CASES)}
  evaluation = VQAEval(_Questions(gts), _Questions(res), n=10)
  evaluation.evaluate()
  print([evaluation.evalQA[i] for i in range(len(VQA_CASES))])


if __name__ == "__main__":
  main()
