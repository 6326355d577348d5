r"""Few-shot evaluation configs: `get_config("<preset>[,tasks=<a>+<b>...]")` for
`python -m flamingo_jax.evaluation.evaluate --config experiments/evaluation.py:<arg> --checkpoint RUN`.

  paper  the paper's seven benchmarks (FLAMINGO.md, "Few-shot evaluation protocol"): COCO, Flickr30k
         (CIDEr), VQAv2, OK-VQA, TextVQA, VizWiz (VQA accuracy), HatefulMemes (ROC-AUC); shots
         0/4/8/16/32, support 2048, 5000 COCO / 1024 other queries, beam search with 3 beams.
         Data under DATA_ROOT (tfds data_dir, and manual/<dataset> with the official files).
  demo   the quickstart's tiny model on the bundled demo corpus (data_pipelines/demo.py), shots
         0/1/2/4/8 on the held-out digit scans: captioning (CIDEr), digit naming (likelihood of the
         ten names; chance 10%) and `renaming`, in-context learning: the shots name the colours with
         held-out nonsense names (chance 25%).

`tasks=coco+vqav2` keeps the named tasks only. The model (its frozen towers included) is the one the
trained run recorded; every field is documented in flamingo_jax/config/evaluation.py.
"""

import os

import ml_collections

from data_pipelines.demo import COLOURS, DIGITS, nonsense_names
from experiments.flamingo import DEMO_CORPUS
from flamingo_jax.config import EvaluationConfig
from flamingo_jax.config.args import parse_arg

DATA_ROOT = "/data/flamingo_eval"  # tfds data_dir; official files under DATA_ROOT/manual/<dataset>.
CAPTION_PROMPT = "<image>Output: {answer}<EOC>"  # FLAMINGO.md
VQA_PROMPT = "<image>Question: {question} Answer: {answer}<EOC>"  # FLAMINGO.md (OpenFlamingo: "Short answer:")
MEMES_PROMPT = '<image>is an image with written: "{question}" on it. Is it hateful? Answer: {answer}<EOC>'


def _task(kind, tfds_name="", *, prompt, num_queries=1024, query_split="validation",
          support_split="train", class_names=(), source="tfds", data_dir=DATA_ROOT, manual_dir=""):
  return dict(kind=kind, source=source, tfds_name=tfds_name, data_dir=data_dir,
              manual_dir=manual_dir, support_split=support_split, query_split=query_split,
              support_size=2048, num_queries=num_queries, prompt=prompt, selection="random",
              num_permutations=6 if kind in ("classification", "mapping") else 1,
              class_names=tuple(class_names), mapping_words=())


def _files(name):
  return os.path.join(DATA_ROOT, "manual", name)


PAPER_TASKS = dict(
    coco=_task("captioning", "coco_captions", prompt=CAPTION_PROMPT, num_queries=5000,
               query_split="val"),
    flickr30k=_task("captioning", "flamingo_eval_files/flickr30k", prompt=CAPTION_PROMPT,
                    manual_dir=_files("flickr30k")),
    vqav2=_task("vqa", "flamingo_eval_files/vqav2", prompt=VQA_PROMPT, manual_dir=_files("vqav2")),
    okvqa=_task("vqa", "flamingo_eval_files/okvqa", prompt=VQA_PROMPT, manual_dir=_files("okvqa")),
    textvqa=_task("vqa", "flamingo_eval_files/textvqa", prompt=VQA_PROMPT,
                  manual_dir=_files("textvqa")),
    vizwiz=_task("vqa", "flamingo_eval_files/vizwiz", prompt=VQA_PROMPT, manual_dir=_files("vizwiz")),
    hateful_memes=_task("classification", "flamingo_eval_files/hateful_memes", prompt=MEMES_PROMPT,
                        class_names=("no", "yes"), manual_dir=_files("hateful_memes")),
)


def _demo_tasks(root):
  demo = dict(source="demo", data_dir=root, support_split="train", query_split="eval")
  # The corpus's own page layouts ("<image>This one is a red seven.<EOC>", "<image>This is a
  # seven.<EOC>", "<image>Baux<EOC>"), which the tiny model knows.
  captions = _task("captioning", prompt="<image>This one is {answer}.<EOC>", num_queries=64, **demo)
  digits = _task("classification", prompt="<image>This is a {answer}.<EOC>", num_queries=150,
                 class_names=DIGITS, **demo)
  # Each query draws fresh names for the colours from the held-out pool (never trained on), so only
  # the shots can tell which colour each names.
  renaming = _task("mapping", prompt="<image>{answer}<EOC>", num_queries=150,
                   class_names=tuple(COLOURS), **demo)
  renaming.update(mapping_words=nonsense_names("heldout"))
  for task in (captions, digits, renaming):  # One shot order: more queries instead of ensembling.
    task.update(support_size=512, num_permutations=1)
  return dict(captions=captions, digits=digits, renaming=renaming)


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
  args = parse_arg(arg, tasks=())
  preset = args["preset"]
  if preset not in ("paper", "demo"):
    raise ValueError(f"Unknown evaluation preset {preset!r}; use 'paper' or 'demo'.")
  tasks = _demo_tasks(DEMO_CORPUS) if preset == "demo" else PAPER_TASKS
  unknown = set(args["tasks"]) - set(tasks)
  if unknown:
    raise ValueError(f"Unknown tasks {sorted(unknown)} for preset {preset!r}; choose from "
                     f"{sorted(tasks)}.")
  config = EvaluationConfig().as_config_dict()
  if preset == "demo":
    config.shots = (0, 1, 2, 4, 8)
    config.sampling.max_new_tokens = 8
  config.tasks = {name: spec for name, spec in tasks.items()
                  if not args["tasks"] or name in args["tasks"]}
  return config
