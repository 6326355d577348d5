"""Evaluation datasets: every task's support and query examples as `EvalExample`s.

Sources (a task's `source` field, experiments/evaluation.py):
* "tfds": a TensorFlow Datasets builder, `tfds_name` (e.g. "coco_captions", "imagenet2012"), and for
  datasets that have none, our builder `flamingo_eval_files/<config>` over the official annotation
  files in `<manual_dir>` (`FlamingoEvalFiles` below):
    vqav2, okvqa  VQA-format `<q_file>` questions json + `<a_file>` annotations json, COCO images
    textvqa       TextVQA json ({"data": [{question, answers, image_id}]}), `<split>_images/<id>.jpg`
    vizwiz        VizWiz json ([{image, question, answers: [{answer}]}]), `<split>/<image>`
    flickr30k     Karpathy-split captions (`dataset_flickr30k.json`), `flickr30k_images/<filename>`
    hateful_memes HatefulMemes jsonl ({id, img, label, text}), `img/<id>.png`
  tfds reads the files once (`download_and_prepare`) and caches them under `data_dir`.
* "demo": the bundled demo corpus's image-caption pairs (data_pipelines/demo.py), split "train" / "eval".

`FIELDS` maps each builder's features onto `EvalExample` (images, answers, question, label).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from data_pipelines import images as image_ops


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """One support or query example.

  image: encoded image bytes (JPEG, PNG, ...) or decoded uint8 pixels [H, W, 3].
  answers: reference captions (captioning), human answers (VQA), or the label's class name.
  question: the VQA question, or the text written on a HatefulMemes meme.
  label: index into the task's class names (classification), else -1.
  """
  key: str
  image: Any
  answers: tuple[str, ...]
  question: str = ""
  label: int = -1


def load_image(example: EvalExample, size: int) -> np.ndarray:
  """The example's image as [size, size, 3] uint8: centre square crop, bilinear resize (the training
  pipeline's evaluation transform, data_pipelines/images.decode)."""
  data = example.image
  if not isinstance(data, bytes):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(data, np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
  return image_ops.decode(data, size)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Builder name -> function(numpy example, class names) -> (answers, question, label), image key "image".
FIELDS: dict[str, Callable[[dict, Sequence[str]], tuple[tuple[str, ...], str, int]]] = {
    "coco_captions": lambda ex, _: (tuple(_text(t) for t in ex["captions"]["text"]), "", -1),
    "flamingo_eval_files": lambda ex, names: (
        tuple(_text(t) for t in ex["answers"]), _text(ex["question"]), int(ex["label"])),
}


def _classification_fields(ex: dict, names: Sequence[str]):
  label = int(ex["label"])
  return (names[label],), "", label


def load_tfds(name: str, split: str, limit: int, data_dir: str | None = None,
              manual_dir: str | None = None) -> tuple[list[EvalExample], tuple[str, ...]]:
  """The first `limit` examples of a tfds split -> (examples, class names (classification) or ())."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  base = name.split("/")[0]
  features = builder.info.features
  class_names = tuple(features["label"].names) if (
      base != "flamingo_eval_files" and "label" in features) else ()
  fields = FIELDS.get(base, _classification_fields if class_names else None)
  if fields is None:
    raise ValueError(f"tfds builder {name!r} has no field mapping; add one to "
                     "data_pipelines.eval_sets.FIELDS or use a task source that has (task.tfds_name).")
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  dataset = tfds.load(name, split=split, data_dir=data_dir,
                      download_and_prepare_kwargs={"download_config": download_config})
  dataset = dataset.take(limit) if limit else dataset
  examples = []
  for n, ex in enumerate(tfds.as_numpy(dataset)):
    answers, question, label = fields(ex, class_names)
    key = _text(ex.get("key", ex.get("image/id", n)))
    examples.append(EvalExample(f"{name}/{split}/{key}", ex["image"], answers, question, label))
  return examples, class_names


def load_demo(root: str, split: str, limit: int, class_names: Sequence[str] = ()) -> list[EvalExample]:
  """The demo corpus's image-caption pairs of `split` ("train" / "eval"); answers = (caption,);
  label = the index of the first of `class_names` among the caption's words (e.g. its colour)."""
  from array_record.python import array_record_module

  from data_pipelines import records
  examples = []
  for path in records.shard_paths(os.path.join(root, split, "pairs")):
    reader = array_record_module.ArrayRecordReader(path)
    try:
      for data in reader.read_all():
        record = records.decode_record(data)
        caption = record.texts[0].data.decode("utf-8")
        label = next((class_names.index(w) for w in caption.split() if w in class_names), -1)
        examples.append(EvalExample(record.source, record.images[0].data, (caption,), label=label))
        if limit and len(examples) == limit:
          return examples
    finally:
      reader.close()
  return examples


# ------------------------------------------------------- official annotation files -> our builder

def read_vqa(questions_file: str, annotations_file: str, image_path: Callable[[int], str]):
  """VQAv2 / OK-VQA format -> (key, image path, question, ten answers) per question."""
  with open(questions_file) as f:
    questions = {q["question_id"]: q for q in json.load(f)["questions"]}
  with open(annotations_file) as f:
    annotations = json.load(f)["annotations"]
  for a in annotations:
    q = questions[a["question_id"]]
    yield (str(a["question_id"]), image_path(q["image_id"]), q["question"],
           [x["answer"] for x in a["answers"]])


def read_textvqa(file: str, image_dir: str):
  with open(file) as f:
    for q in json.load(f)["data"]:
      yield (str(q["question_id"]), os.path.join(image_dir, f"{q['image_id']}.jpg"), q["question"],
             q.get("answers", []))


def read_vizwiz(file: str, image_dir: str):
  with open(file) as f:
    for q in json.load(f):
      yield (q["image"], os.path.join(image_dir, q["image"]), q["question"],
             [a["answer"] for a in q.get("answers", [])])


def read_karpathy(file: str, image_dir: str, split: str):
  """Karpathy-split caption json ({"images": [{filename, split, sentences: [{raw}]}]}) -> captions."""
  with open(file) as f:
    for im in json.load(f)["images"]:
      if im["split"] == split or (split == "train" and im["split"] == "restval"):
        yield (im["filename"], os.path.join(image_dir, im["filename"]), "",
               [s["raw"] for s in im["sentences"]])


def read_hateful_memes(file: str, image_dir: str):
  """HatefulMemes jsonl ({id, img, label, text}) -> (key, image, meme text, label)."""
  with open(file) as f:
    for line in f:
      if line.strip():
        m = json.loads(line)
        yield str(m["id"]), os.path.join(image_dir, m["img"]), m["text"], int(m.get("label", -1))


def _eval_files_builder():
  """Defines (once) and returns the tfds builder class over the official annotation files."""
  import tensorflow_datasets as tfds

  if "FlamingoEvalFiles" in globals():
    return globals()["FlamingoEvalFiles"]

  def config(name, description):
    return tfds.core.BuilderConfig(name=name, description=description)

  class FlamingoEvalFiles(tfds.core.GeneratorBasedBuilder):
    """Few-shot evaluation sets read from their official annotation files in the manual dir."""

    VERSION = tfds.core.Version("1.0.0")
    # Nothing is downloaded, so no URL checksums; looking for their file would import
    # importlib_resources, which tfds does not install.
    url_infos = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__ + " See data_pipelines/eval_sets.py for each layout."
    BUILDER_CONFIGS = [
        config("vqav2", "v2_OpenEnded_mscoco_{train,val}2014_questions.json, "
               "v2_mscoco_{train,val}2014_annotations.json, {train,val}2014/ images"),
        config("okvqa", "OpenEnded_mscoco_{train,val}2014_questions.json, "
               "mscoco_{train,val}2014_annotations.json, {train,val}2014/ images"),
        config("textvqa", "TextVQA_0.5.1_{train,val}.json, train_images/"),
        config("vizwiz", "{train,val}.json, {train,val}/ images"),
        config("flickr30k", "dataset_flickr30k.json, flickr30k_images/"),
        config("hateful_memes", "{train,dev_seen}.jsonl, img/"),
    ]

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "key": tfds.features.Text(),
          "image": tfds.features.Image(shape=(None, None, 3)),
          "question": tfds.features.Text(),
          "answers": tfds.features.Sequence(tfds.features.Text()),
          "label": np.int64,
      }))

    def _split_generators(self, dl_manager):
      root = str(dl_manager.manual_dir)
      return {split: self._generate_examples(root, split) for split in ("train", "validation")}

    def _generate_examples(self, root, split):
      name, short = self.builder_config.name, {"train": "train", "validation": "val"}[split]
      join = lambda *p: os.path.join(root, *p)  # noqa: E731
      if name in ("vqav2", "okvqa"):
        prefix = ("v2_OpenEnded_mscoco", "v2_mscoco") if name == "vqav2" else (
            "OpenEnded_mscoco", "mscoco")
        rows = ((key, path, q, answers, -1) for key, path, q, answers in read_vqa(
            join(f"{prefix[0]}_{short}2014_questions.json"),
            join(f"{prefix[1]}_{short}2014_annotations.json"),
            lambda i: join(f"{short}2014", f"COCO_{short}2014_{i:012d}.jpg")))
      elif name == "textvqa":
        rows = ((*r, -1) for r in read_textvqa(join(f"TextVQA_0.5.1_{short}.json"),
                                               join("train_images")))
      elif name == "vizwiz":
        rows = ((*r, -1) for r in read_vizwiz(join(f"{short}.json"), join(short)))
      elif name == "flickr30k":
        rows = ((*r, -1) for r in read_karpathy(join("dataset_flickr30k.json"),
                                                join("flickr30k_images"), short))
      else:
        file = "train.jsonl" if split == "train" else "dev_seen.jsonl"
        rows = ((key, path, text, [("no", "yes")[label]] if label >= 0 else [], label)
                for key, path, text, label in read_hateful_memes(join(file), root))
      for key, path, question, answers, label in rows:
        yield key, dict(key=key, image=path, question=question, answers=answers, label=label)

  globals()["FlamingoEvalFiles"] = FlamingoEvalFiles
  return FlamingoEvalFiles


def load_task_split(task, split: str, limit: int) -> tuple[list[EvalExample], tuple[str, ...]]:
  """A task's examples of `split` (its `support_split` or `query_split`), at most `limit` (0: all),
  and its class names (classification tasks; from the task's `class_names` when set)."""
  if task.source == "demo":
    return load_demo(task.data_dir, split, limit, tuple(task.class_names)), tuple(task.class_names)
  if task.source == "tfds":
    if task.tfds_name.startswith("flamingo_eval_files"):
      _eval_files_builder()
    examples, names = load_tfds(task.tfds_name, split, limit, data_dir=task.data_dir or None,
                                manual_dir=task.manual_dir or None)
    return examples, tuple(task.class_names) or names
  raise ValueError(f"task source={task.source!r}: use 'tfds' or 'demo' (task.source).")
