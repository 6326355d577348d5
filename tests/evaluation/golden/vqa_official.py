"""The official VQA evaluation (GT-Vision-Lab/VQA at a013f00, PythonEvaluationTools/vqaEvaluation's
VQAEval) run on (prediction, ten human answers) cases; the same source under Python 2 (as written)
and Python 3 (its print statements made calls). Used by make_vqa_python2_golden.py and
tests/evaluation/vqa_reference_values.py.
"""

from vqaEval import VQAEval


class _Questions(object):  # The two members of the official VQA helper class that VQAEval uses.

  def __init__(self, qa):
    self.qa = qa

  def getQuesIds(self):  # noqa: N802 (the official name)
    return list(self.qa)


def official_accuracies(cases):
  """[(prediction, [ten answers])] -> the accuracy (percent) VQAEval.evaluate stores in evalQA for
  each case, in order."""
  gts = {i: {"answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)],
             "question_type": "t", "answer_type": "a"} for i, (_, answers) in enumerate(cases)}
  res = {i: {"answer": prediction} for i, (prediction, _) in enumerate(cases)}
  evaluation = VQAEval(_Questions(gts), _Questions(res), n=10)
  evaluation.evaluate()
  return [evaluation.evalQA[i] for i in range(len(cases))]
