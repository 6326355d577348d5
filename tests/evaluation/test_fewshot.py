"""Few-shot harness: prompts and shot order, RICES, and the whole evaluation of the tiny model on
tfds mock data and the demo corpus (scores equal the metrics of the model's recorded outputs); the
golden tests with a stub model are in test_harness.py."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.eval_sets import EvalExample, load_task_split
from experiments import evaluation as evaluation_presets
from flamingo_jax.config import EvaluationConfig
from flamingo_jax.evaluation import evaluate, fewshot, metrics, rices
from flamingo_jax.evaluation import runner as runner_lib
from flamingo_jax.inference import decoding
from flamingo_jax.models.vision import VisionTransformer
from tests.builders import DEMO_SIZES, init_params, tiny_config

SIZE = 32


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory):
  """The bundled demo corpus (its 512-piece tokenizer fits the tiny model)."""
  from data_pipelines import demo
  return demo.build(str(tmp_path_factory.mktemp("corpus")), sizes=DEMO_SIZES)


def _example(key, colour, answers=("a cat",), question=""):
  image = np.zeros((40, 48, 3), np.uint8)
  image[..., colour] = 255
  return EvalExample(key, image, tuple(answers), question)


def test_prompt_with_shots_in_order(tokenizer):
  template = "<image>Question: {question} Answer: {answer}<EOC>"
  shots = [(_example("s0", 0, question="what colour?"), "red"),
           (_example("s1", 2, question="what is it?"), "dog")]
  query = _example("q", 1, question="is it blue?")
  prompt = fewshot.build_prompt(tokenizer, template, query, shots, SIZE)
  assert tokenizer.decode(prompt.ids[1:]) == (
      "<image>Question: what colour? Answer: red<EOC><image>Question: what is it? Answer: dog<EOC>"
      "<image>Question: is it blue? Answer:")
  assert prompt.ids[0] == tokenizer.bos_id
  # Images in <image> order, cropped / resized: shot 0 is red, shot 1 blue, the query green.
  assert [int(np.argmax(im[SIZE // 2, SIZE // 2])) for im in prompt.images] == [0, 2, 1]
  assert all(im.shape == (SIZE, SIZE, 3) for im in prompt.images)


def test_zero_shot_prompt_has_two_text_only_examples(tokenizer):
  support = [_example(f"s{i}", 0, answers=(f"caption {i}",)) for i in range(6)]
  query = _example("q", 1)
  indices = fewshot.random_shots(num_queries=3, support_size=6, num_shots=2, seed=0)
  assert indices.tolist() == [[4, 3], [2, 5], [0, 4]]  # Distinct per query, seeded per query.
  shots = [(support[i], support[i].answers[0]) for i in indices[0]]
  prompt = fewshot.build_prompt(tokenizer, "<image>Output: {answer}<EOC>", query, shots, SIZE,
                                text_only=True)
  text = tokenizer.decode(prompt.ids[1:])
  assert text == "Output: caption 4<EOC>Output: caption 3<EOC><image>Output:"
  assert len(prompt.images) == 1  # The query's image only.


def test_pad_batch_left_pads_and_places_images(tokenizer):
  a = fewshot.Prompt((1, 5, 6), (np.full((SIZE, SIZE, 3), 7, np.uint8),))
  b = fewshot.Prompt(tuple(range(1, 40)), (np.ones((SIZE, SIZE, 3), np.uint8),) * 2)
  tokens, mask, images = fewshot.pad_batch([a, b], pad_id=0, image_size=SIZE, pad_to_multiple=32)
  assert tokens.shape == (2, 64) and images.shape == (2, 2, 1, SIZE, SIZE, 3)
  assert tokens[0, -3:].tolist() == [1, 5, 6] and mask[0].sum() == 3 and not mask[0, :-3].any()
  assert (images[0, 0] == 7).all() and (images[0, 1] == 0).all()


def test_order_permutations_are_distinct():
  assert fewshot.order_permutations(4, 6, seed=0) == [  # The identity first.
      (0, 1, 2, 3), (3, 0, 1, 2), (0, 3, 1, 2), (3, 1, 2, 0), (1, 3, 0, 2), (1, 3, 2, 0)]
  assert fewshot.order_permutations(2, 6, seed=0) == [(0, 1), (1, 0)]  # Only 2! orders exist.


def test_template_without_answer_is_rejected():
  settings = evaluation_presets.get_config("demo")
  with pytest.raises(ValueError, match="tasks.captions.prompt='<image>Output:': must contain "
                     "exactly one {answer}"):
    EvaluationConfig.from_dict(settings).replace({"tasks.captions.prompt": "<image>Output:"})


def test_rices_most_similar_last():
  # Support features at known angles from the query direction e0.
  angles = np.deg2rad([80, 10, 45, 170, 30, 60])
  support = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
  query = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  picked = rices.most_similar(query, support, k=3)
  assert picked[0].tolist() == [2, 4, 1]  # 45, 30, 10 degrees: the most similar (10) last.
  assert picked.shape == (2, 3)
  with pytest.raises(ValueError, match="support_size"):
    rices.most_similar(query, support, k=7)


def _vision_params(config, seed):
  tower = VisionTransformer(config.vision, config.execution)
  images = np.zeros((1, 1, 1, SIZE, SIZE, 3), np.uint8)
  return nn.meta.unbox(tower.init(jax.random.key(seed), images)["params"])


def test_rices_features_are_cached(tmp_path):
  config = tiny_config()
  vision = _vision_params(config, seed=0)
  examples = [_example(f"e{i}", i % 3) for i in range(5)]
  fingerprint = rices.model_fingerprint(config, vision)
  calls = []

  def compute():
    calls.append(1)
    return rices.vision_features(config, vision, examples, batch_size=4)

  first = rices.cached_features(str(tmp_path), "demo", "train", examples, fingerprint, compute)
  second = rices.cached_features(str(tmp_path), "demo", "train", examples, fingerprint, compute)
  assert len(calls) == 1 and first.shape == (5, config.vision.width)
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
  # Same colour -> same features: examples 0 and 3 are each other's nearest neighbours.
  assert rices.most_similar(first[:1], first[1:], k=1)[0, 0] == 2
  other = rices.model_fingerprint(config, _vision_params(config, seed=1))
  assert other != fingerprint and len(os.listdir(tmp_path)) == 1


class Recorder:
  """`decoding.generate` and `decoding.score` through `runner.ModelCalls`, every output kept."""

  def __init__(self):
    self.outputs = []

  def calls(self) -> runner_lib.ModelCalls:
    return runner_lib.ModelCalls(self._kept(decoding.generate), self._kept(decoding.score))

  def _kept(self, fn):
    def call(*args):
      self.outputs.append(jax.device_get(fn(*args)))
      return self.outputs[-1]
    return call


def _texts(tokenizer, outputs, count: int) -> list[str]:
  """The first `count` texts that generate `outputs` [(new tokens, lengths)] hold."""
  return [tokenizer.decode(new[b, :lengths[b]]).strip() for new, lengths in outputs
          for b in range(len(new))][:count]


def test_harness_end_to_end_on_tfds_mock_data(tmp_path, demo_corpus):
  import tensorflow_datasets as tfds
  tokenizer = tokenizer_lib.Tokenizer(demo_corpus["tokenizer"])
  config = tiny_config()
  params = init_params(config)
  settings = EvaluationConfig.from_dict(evaluation_presets.get_config("paper,tasks=coco+vqav2"))
  settings = settings.replace({
      "shots": (0, 2), "batch_size": 4,
      "pad_to_multiple": 128,  # Both tasks' prompts share shapes: one compilation per shot count.
      "sampling.strategy": "greedy", "sampling.max_new_tokens": 3,  # Beam search: decoding's tests.
      "tasks.vqav2.selection": "rices",
      **{f"tasks.{name}.{field}": value for name in ("coco", "vqav2") for field, value in
         (("num_queries", 5), ("support_size", 6), ("data_dir", str(tmp_path / "tfds")))}})
  lines, recorder = [], Recorder()
  with tfds.testing.mock_data(num_examples=8):
    results = evaluate.evaluate(settings, config, params, tokenizer, str(tmp_path / "out"),
                                lines.append, recorder.calls())
    coco_refs, _ = load_task_split(settings.tasks["coco"], "val", 5)
    vqa_refs, _ = load_task_split(settings.tasks["vqav2"], "validation", 5)
  # Two batches (5 queries, 4 a batch) per task and shot count, in the order coco 0, 2, vqav2 0, 2.
  texts = [_texts(tokenizer, recorder.outputs[i:i + 2], 5) for i in range(0, 8, 2)]
  cider = [100 * metrics.cider_d_of_texts([ex.answers for ex in coco_refs], p)[0]
           for p in texts[:2]]
  accuracy = [100 * np.mean([metrics.vqa_accuracy(t, ex.answers) for t, ex in zip(p, vqa_refs)])
              for p in texts[2:]]
  coco, vqa = results["tasks"]["coco"], results["tasks"]["vqav2"]
  assert coco["scores"] == {"0": cider[0], "2": cider[1]}
  assert vqa["scores"] == {"0": accuracy[0], "2": accuracy[1]}
  assert (coco["metric"], vqa["metric"]) == ("cider", "vqa_accuracy")
  assert coco["num_queries"] == vqa["num_queries"] == 5 and vqa["selection"] == "rices"
  assert json.load(open(tmp_path / "out" / "results.json"))["tasks"]["coco"]["scores"] == coco["scores"]
  table = open(tmp_path / "out" / "results.md").read().splitlines()
  assert table[0] == "| shots | coco (CIDEr) | vqav2 (VQA acc.) |"
  assert [row.split(" |")[0] for row in table[2:4]] == ["| 0", "| 2"]
  assert len(os.listdir(tmp_path / "out" / "rices")) == 2  # Support and query features of vqav2.
  assert any("coco 2-shot" in line for line in lines)


def test_in_context_renaming_task_on_the_demo_corpus(tmp_path, demo_corpus):
  from data_pipelines.demo import nonsense_names
  tokenizer = tokenizer_lib.Tokenizer(demo_corpus["tokenizer"])
  config = tiny_config()
  settings = EvaluationConfig.from_dict(evaluation_presets.get_config("demo,tasks=renaming"))
  settings = settings.replace({"batch_size": 4, "tasks.renaming.data_dir": os.path.dirname(
      demo_corpus["tokenizer"]), "tasks.renaming.num_queries": 4, "tasks.renaming.support_size": 24,
      "tasks.renaming.num_permutations": 2})
  recorder = Recorder()
  runner = runner_lib.TaskRunner("renaming", settings.tasks["renaming"], settings, config,
                                 init_params(config), tokenizer, str(tmp_path / "rices"),
                                 lambda _: None, recorder.calls())
  assert runner.class_names == ("red", "green", "blue", "yellow")
  assert runner.shown_names == nonsense_names("heldout")  # Never in a training page.
  assert all(ex.answers[0].split()[1] == runner.class_names[ex.label] for ex in runner.support)
  assert [runner._renaming(q).tolist() for q in range(2)] == [  # Seeded draws, one per query.
      [129, 6, 128, 36], [148, 26, 0, 155]]
  for k in (1, 2, 4, 8):
    indices, text_only = runner.shots(k)
    assert not text_only
    for q, row in enumerate(indices):  # k < 4: k different colours; more: every colour.
      labels = [runner.support[i].label for i in row]
      assert len(set(labels)) == min(k, 4) and len(labels) == k
      prompt = tokenizer.decode(runner._prompt(q, row, text_only=False).ids[1:])
      shown = [runner.shown_names[runner._renaming(q)[label]] for label in labels]
      assert prompt == "".join(f"<image>{name}<EOC>" for name in shown) + "<image>"
  labels = [ex.label for ex in runner.queries]
  for shots, orders in ((0, 1), (4, 2)):  # 0 shots: one order of the text-only examples.
    recorder.outputs.clear()
    score = runner.run(shots)
    # One batch of the 4 queries per order: top-1 of the scores averaged over the orders.
    assert len(recorder.outputs) == orders
    average = np.mean(np.asarray(recorder.outputs, np.float64), axis=0)
    correct = int(np.sum(np.argmax(average, -1) == labels))
    assert score.value == 100 * correct / 4
    assert (score.low, score.high) == tuple(100 * v for v in metrics.wilson_interval(correct, 4))


def test_official_vqa_files_through_our_tfds_builder(tmp_path):
  from PIL import Image
  root = tmp_path / "vqav2"
  for split, image_ids in (("train", (1, 2)), ("val", (7,))):
    os.makedirs(root / f"{split}2014")
    for i in image_ids:
      Image.new("RGB", (50, 40), (10 * i,) * 3).save(root / f"{split}2014" /
                                                    f"COCO_{split}2014_{i:012d}.jpg")
    questions = [{"image_id": i, "question": f"q{i}?", "question_id": 100 + i} for i in image_ids]
    annotations = [{"question_id": 100 + i, "image_id": i,
                    "answers": [{"answer": f"a{i}", "answer_id": j + 1} for j in range(10)]}
                   for i in image_ids]
    json.dump({"questions": questions},
              open(root / f"v2_OpenEnded_mscoco_{split}2014_questions.json", "w"))
    json.dump({"annotations": annotations},
              open(root / f"v2_mscoco_{split}2014_annotations.json", "w"))
  task = EvaluationConfig.from_dict(evaluation_presets.get_config("paper,tasks=vqav2")).replace(
      {"tasks.vqav2.data_dir": str(tmp_path / "tfds"), "tasks.vqav2.manual_dir": str(root)}
  ).tasks["vqav2"]
  train, _ = load_task_split(task, "train", 0)
  (query,), _ = load_task_split(task, "validation", 0)
  assert sorted((ex.question, ex.answers[0]) for ex in train) == [("q1?", "a1"), ("q2?", "a2")]
  assert query.question == "q7?" and len(query.answers) == 10
  assert query.image.shape == (40, 50, 3) and (query.image == 70).all()  # Grey: JPEG keeps it.


def test_official_file_readers(tmp_path):
  from data_pipelines import eval_sets as eval_data
  (tmp_path / "karpathy.json").write_text(json.dumps({"images": [
      {"filename": "1.jpg", "split": "test", "sentences": [{"raw": "A dog."}, {"raw": "A cat."}]},
      {"filename": "2.jpg", "split": "restval", "sentences": [{"raw": "A man."}]},
      {"filename": "3.jpg", "split": "train", "sentences": [{"raw": "Two men."}]}]}))
  train = list(eval_data.read_karpathy(str(tmp_path / "karpathy.json"), "im", "train"))
  assert [(key, path, answers) for key, path, _, answers in train] == [
      ("2.jpg", "im/2.jpg", ["A man."]), ("3.jpg", "im/3.jpg", ["Two men."])]  # restval trains.
  (tmp_path / "memes.jsonl").write_text(
      '{"id": 42, "img": "img/42.png", "label": 1, "text": "hi"}\n\n'
      '{"id": 7, "img": "img/07.png", "text": "unlabelled"}\n')
  assert list(eval_data.read_hateful_memes(str(tmp_path / "memes.jsonl"), "root")) == [
      ("42", "root/img/42.png", "hi", 1), ("7", "root/img/07.png", "unlabelled", -1)]
  (tmp_path / "textvqa.json").write_text(json.dumps({"data": [
      {"question_id": 3, "image_id": "ab", "question": "what?", "answers": ["x"] * 10}]}))
  assert list(eval_data.read_textvqa(str(tmp_path / "textvqa.json"), "ims")) == [
      ("3", "ims/ab.jpg", "what?", ["x"] * 10)]
  (tmp_path / "vizwiz.json").write_text(json.dumps([
      {"image": "VizWiz_val_1.jpg", "question": "colour?", "answers": [{"answer": "red"}] * 10}]))
  assert list(eval_data.read_vizwiz(str(tmp_path / "vizwiz.json"), "val")) == [
      ("VizWiz_val_1.jpg", "val/VizWiz_val_1.jpg", "colour?", ["red"] * 10)]
