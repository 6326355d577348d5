r"""Peer benchmark: our trainer's step against OpenFlamingo's, same shapes, same host, in alternation.

  make peers   # .venv-peers: pip install -e '.[peers]', then open-flamingo==2.0.1 with --no-deps
  python benchmarks/peers.py [--every 1,4] [--rounds 5] [--threads 2]

Both models are the `bench` preset's shapes (experiments/flamingo.py): batch 8 x 128 tokens with 2
images of 224 px; ViT 384 wide x 6 layers (patch 32); LM 512 wide x 8 layers, SwiGLU 1376, vocabulary
32,000 (+2 new tokens); gated blocks every `--every` layers; resampler 2 layers x 64 latents; both
towers frozen; AdamW (lr 1e-3, weight decay 0.1) with the gradient clipped at norm 1.
* ours: the trainer's own update (`benchmarks.common.TrainerStep`), f32.
* OpenFlamingo 2.0.1: its `Flamingo` class around an open_clip ViT and a `transformers`
  LlamaForCausalLM, both built from configs with random weights (no download), f32, its perceiver
  replaced by one of 2 layers (its class hard-codes 6) with our widths; the LM's input embeddings
  frozen (`freeze_lm_embeddings=True`: ours trains only the 2 new rows, torch can only train all
  32,002, so theirs does less work); loss from its forward with labels, `backward`,
  `clip_grad_norm_`, `AdamW.step`, `zero_grad(set_to_none=True)`.
Each runs in its own process (so each has its own peak RSS), built first; then the parent asks
them for one update in turn (after one untimed warm-up each), `--rounds` times each, and takes
medians; peak RSS is read after the updates, before the forward-only runs. The forward-only
time is the loss without gradients (`torch.no_grad` / a jitted loss). Prints JSON lines:
  peer_step_s_{ours,openflamingo}_every{n}, peer_step_ratio_openflamingo[_every{n}] (ours / theirs),
  peer_forward_ratio_openflamingo[_every{n}], peer_rss_bytes_*, peer_rss_ratio_openflamingo[_every{n}]
  (whole-process peak RSS, VmHWM). The unsuffixed names are the `bench` preset (every layer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmarks.common import emitter, peak_rss_bytes  # noqa: E402

emit = emitter("peers")
PEERS = ("ours", "openflamingo")


def bench_config(every: int):
  """The `bench` preset with gated blocks every `every` layers."""
  from experiments import flamingo as presets
  from flamingo_jax.config import Config
  return Config.from_dict(presets.get_config("bench")).replace({"model.xattn.every": every})


def ours(every: int) -> dict:
  """{"step", "forward"}: callables that run one update / one loss of our trainer."""
  import jax

  from benchmarks.common import TrainerStep

  trainer = TrainerStep(bench_config(every))
  batch = trainer.batches["interleaved"]
  loss = jax.jit(trainer.loss)

  def forward():
    jax.block_until_ready(loss(trainer.state.trainable, batch))
  return {"step": trainer.run, "forward": forward}


def _importable_torchvision() -> None:
  """open_clip imports torchvision (for transforms unused here). The registry's torchvision wheel is
  built against CUDA torch, so its compiled ops do not load beside the CPU torch wheel and its import
  then fails registering fake kernels for two ops; declaring their schemas lets it import."""
  import torch
  if not hasattr(torch.ops, "torchvision") or not hasattr(torch.ops.torchvision, "nms"):
    library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
      library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _importable_torchvision.library = library  # Keep the definitions alive.


def openflamingo(every: int) -> dict:
  """{"step", "forward"} of OpenFlamingo's Flamingo on the same shapes (random weights, f32)."""
  import numpy as np
  import torch
  _importable_torchvision()
  import open_clip
  from open_flamingo.src.flamingo import Flamingo as OpenFlamingo
  from open_flamingo.src.flamingo_lm import FlamingoLMMixin
  from open_flamingo.src.helpers import PerceiverResampler
  from open_flamingo.src.utils import extend_instance
  from transformers import LlamaConfig, LlamaForCausalLM

  from benchmarks.common import make_batch
  cfg = bench_config(every)
  m, d = cfg.model, cfg.data.datasets["interleaved"]
  torch.manual_seed(0)
  v = m.vision
  clip = open_clip.CLIP(embed_dim=64, vision_cfg=dict(
      image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.num_layers,
      head_width=v.width // v.num_heads, mlp_ratio=v.mlp_dim / v.width),
      text_cfg=dict(context_length=8, vocab_size=64, width=64, heads=1, layers=1))
  clip.visual.output_tokens = True
  lm = LlamaForCausalLM(LlamaConfig(
      vocab_size=m.lm.vocab_size, hidden_size=m.lm.width, intermediate_size=m.lm.mlp_dim,
      num_hidden_layers=m.lm.num_layers, num_attention_heads=m.lm.num_heads,
      num_key_value_heads=m.lm.num_kv_heads, max_position_embeddings=2048,
      tie_word_embeddings=False))
  extend_instance(lm, FlamingoLMMixin)
  lm.set_decoder_layers_attr_name("model.layers")
  lm.resize_token_embeddings(m.lm.vocab_size + 2, mean_resizing=False)
  eoc, image = m.lm.vocab_size, m.lm.vocab_size + 1
  model = OpenFlamingo(clip, lm, eoc, image, vis_dim=v.width, cross_attn_every_n_layers=every)
  r = m.resampler
  model.perceiver = PerceiverResampler(dim=v.width, depth=r.num_layers, dim_head=r.head_dim,
                                       heads=r.num_heads, num_latents=r.num_latents)
  model.requires_grad_(False)
  model.perceiver.requires_grad_(True)
  model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
  trainable = [p for p in model.parameters() if p.requires_grad]
  o = cfg.optimizer
  optimizer = torch.optim.AdamW(trainable, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                                weight_decay=o.weight_decay)

  tokens, images, _ = make_batch(m, d.batch_size, d.seq_len, d.max_images)
  tokens = np.array(tokens)  # A writable copy.
  tokens[tokens == m.image_token_id] = image  # Their <image> id.
  lang_x = torch.from_numpy(tokens).long()
  pixels = torch.from_numpy(np.asarray(images)).permute(0, 1, 2, 5, 3, 4)  # [B, N, F, 3, H, W]
  mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
  std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
  attention_mask = torch.ones_like(lang_x)

  def loss():
    vision_x = (pixels.float() / 255 - mean) / std
    return model(vision_x, lang_x, attention_mask=attention_mask, labels=lang_x).loss

  def step():
    loss().backward()
    torch.nn.utils.clip_grad_norm_(trainable, o.clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  def forward():
    with torch.no_grad():
      loss()
  model.train()
  return {"step": step, "forward": forward}


def worker(peer: str, every: int, threads: int) -> None:
  """Builds `peer`, then answers lines on stdin: a callable's name -> its seconds; "rss" -> peak
  RSS bytes; "quit". The parent warms each callable up (untimed) before timing it, and asks for
  the RSS after the training steps, before the forward-only loss is first run (so a training
  process's peak does not include the extra compile of a loss it never runs alone)."""
  if peer == "openflamingo":
    import torch
    torch.set_num_threads(threads)
  else:  # As the trainer does before JAX starts (--cpu_flags).
    from flamingo_jax.training import xla_flags
    xla_flags.set_cpu_flags()
  calls = {"ours": ours, "openflamingo": openflamingo}[peer](every)
  print("ready", flush=True)
  for line in sys.stdin:
    command = line.strip()
    if command == "quit":
      return
    if command == "rss":
      print(peak_rss_bytes(), flush=True)
      continue
    start = time.perf_counter()
    calls[command]()
    print(time.perf_counter() - start, flush=True)


class Peer:
  """A worker process of one peer; ask(command) -> its answer."""

  def __init__(self, peer: str, every: int, threads: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads))
    self.process = subprocess.Popen(
        [sys.executable, __file__, "--worker", peer, "--every", str(every), "--threads",
         str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if self.process.stdout.readline().strip() != "ready":
      raise RuntimeError(f"The {peer} worker failed to start (its error is printed above).")

  def ask(self, command: str) -> float:
    self.process.stdin.write(command + "\n")
    self.process.stdin.flush()
    return float(self.process.stdout.readline())

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait()


def compare(every: int, rounds: int, threads: int) -> None:
  suffix, tag = ("" if every == 1 else f"_every{every}"), dict(xattn_every=every, threads=threads)
  times = {peer: {"step": [], "forward": []} for peer in PEERS}
  workers = {}
  try:
    for peer in PEERS:  # One at a time: neither's build or compile overlaps the other's timing.
      workers[peer] = Peer(peer, every, threads)
    rss = {}
    for call in ("step", "forward"):
      for peer in PEERS:
        workers[peer].ask(call)  # Warm-up: compiles, first allocations.
      for _ in range(rounds):
        for peer in PEERS:
          times[peer][call].append(workers[peer].ask(call))
      if call == "step":
        rss = {peer: workers[peer].ask("rss") for peer in PEERS}
  finally:
    for w in workers.values():
      w.close()
  median = {peer: {call: statistics.median(times[peer][call]) for call in ("step", "forward")}
            for peer in PEERS}
  for peer in PEERS:
    emit(f"peer_step_s_{peer}_every{every}", median[peer]["step"], "s",
         runs=[round(t, 4) for t in times[peer]["step"]], **tag)
    emit(f"peer_forward_s_{peer}_every{every}", median[peer]["forward"], "s",
         runs=[round(t, 4) for t in times[peer]["forward"]], **tag)
    emit(f"peer_rss_bytes_{peer}_every{every}", rss[peer], "bytes", **tag)
  emit(f"peer_step_ratio_openflamingo{suffix}", median["ours"]["step"] / median["openflamingo"]["step"],
       "ratio", target=1.0, **({"goal": 0.75} if every == 1 else {}), **tag)
  emit(f"peer_forward_ratio_openflamingo{suffix}",
       median["ours"]["forward"] / median["openflamingo"]["forward"], "ratio", **tag)
  emit(f"peer_rss_ratio_openflamingo{suffix}", rss["ours"] / rss["openflamingo"], "ratio",
       target=0.8, **tag)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--every", default="1,4", help="Gated blocks every n layers, comma-separated.")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args.worker, int(args.every), args.threads)
  import jax
  from benchmarks.common import environment
  environment(emit)
  import importlib.metadata as metadata
  emit("versions", 0, "info", jax=jax.__version__,
       **{name: metadata.version(name) for name in ("torch", "open-flamingo", "open_clip_torch",
                                                    "transformers")})
  for every in (int(n) for n in args.every.split(",")):
    compare(every, args.rounds, args.threads)


if __name__ == "__main__":
  main()
