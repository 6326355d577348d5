"""Every setting, typed and documented once, checked before anything is traced.

  schema      the typed-section machinery: `Section.from_dict`, checks that name the full field
  model       `FlamingoConfig` (config.model) and its parts
  run         `Config`: a training run (task, model, mesh, data, optimizer, train, init, quickstart)
  evaluation  `SamplingConfig` (decoding) and `EvaluationConfig` (few-shot tasks)
  serve       `ServeConfig`: the HTTP server's decode batch, cache length and request limits
  args        `parse_arg`: keyed preset arguments, `experiments/flamingo.py:tiny,data=demo`
  sweeps      lists of flat overrides (products, zips, chains) expanded into checked runs

Imports nothing else from `flamingo_jax`. The names below are the package's public API.
"""

from flamingo_jax.config.evaluation import EvalTaskConfig, EvaluationConfig, SamplingConfig
from flamingo_jax.config.model import (ExecutionConfig, FlamingoConfig, LMConfig, ResamplerConfig,
                                       RopeScalingConfig, VisionConfig, XAttnConfig)
from flamingo_jax.config.run import (Config, DataConfig, DatasetConfig, InitConfig, MeshConfig,
                                     OptimizerConfig, QuickstartConfig, TrainConfig)
from flamingo_jax.config.serve import ServeConfig

__all__ = ["Config", "DataConfig", "DatasetConfig", "EvalTaskConfig", "EvaluationConfig",
           "ExecutionConfig", "FlamingoConfig", "InitConfig", "LMConfig", "MeshConfig",
           "OptimizerConfig", "QuickstartConfig", "ResamplerConfig", "RopeScalingConfig",
           "SamplingConfig", "ServeConfig", "TrainConfig", "VisionConfig", "XAttnConfig"]
