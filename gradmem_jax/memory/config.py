"""The memory section of a config, as a frozen (hashable, jit-static) dataclass."""
from __future__ import annotations

import dataclasses

from gradmem_jax.models import common
from gradmem_jax.registry import from_section

GRAD_MODES = ('second', 'first', 'none')
MEM_PROJ_MODES = ('none', 'proj', 'per_sample')
INNER_OPTIMIZERS = ('sgd', 'adam')
LEARN_INNER_LR = ('none', 'scalar', 'per_step')
INNER_IMPLS = ('batched', 'vmap')
RMT_UPDATES = ('replace', 'residual')
# Methods whose WRITE applies memory.lora_rank (write-only LoRA needs a WRITE pass distinct from
# READ with the same backbone; RMT and full_context ignore it, so they refuse it).
LORA_METHODS = ('gradmem',)


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
  """Everything that defines the WRITE/READ functions (not the backbone).

  These defaults are the only ones: configs/*.py build `config.memory` from them, and their
  presets state what differs (the paper's KV settings are the defaults here).
  """
  method: str = 'gradmem'         # a registered method: gradmem | rmt | full_context | ...
  num_memory: int = 8             # m: memory vectors
  K: int = 2                      # WRITE steps (gradient steps; RMT: context passes)
  inner_lr: float = 0.04          # alpha (initial value when learned)
  inner_optimizer: str = 'sgd'    # sgd | adam (Adam is differentiated through)
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8          # inside the square root: finite second derivatives at v = 0
  clip_value: float = 0.0         # element-wise clip of the inner gradient (0: off)
  clip_norm: float = 0.0          # per-sample Frobenius-norm clip of the inner gradient (0: off)
  grad_mode: str = 'second'       # second | first | none
  last_k_second_order: int = -1   # with grad_mode=second: only the last L steps second order (-1: all)
  mem_proj: str = 'none'          # none | proj (learned, identity init) | per_sample (adapted in WRITE)
  write_head: bool = True         # untied copy of the output embedding used only in WRITE
  num_ctrl: int = 0               # c: control tokens per slot (write/read start/end)
  learn_inner_lr: str = 'none'    # none | scalar | per_step (log-parametrised, > 0)
  inner_loss_weight: float = 0.5  # lambda: weight of the WRITE loss at the last inner step
                                  # in the outer loss (0.5 in the authors' KV runs)
  init_std: float = 0.02          # std of M0 and control tokens
  inner_impl: str = 'batched'     # batched (sum of per-sample losses) | vmap (per-sample vmap)
  inner_remat: str = 'none'       # remat policy of one inner step (models.common.REMAT_POLICIES)
  unroll_inner: bool = True       # unroll the K-step scan: no stacked residuals to copy (faster);
                                  # ignored (rolled) when inner_remat is set
  rmt_update: str = 'replace'     # RMT xK: replace the memory, or residual + layer norm
  # Write-only LoRA: adapters on the backbone in WRITE only (READ uses the base model). The factors
  # live in params['memory']['lora'] and are merged (W + alpha/r A@B) once per WRITE.
  lora_rank: int = 0              # r (0: off)
  lora_alpha: float = 16.0        # scale alpha / r
  lora_dropout: float = 0.0       # must be 0: a merged adapter has no separate input to drop
  lora_targets: tuple = ('q_proj', 'v_proj')  # module names whose kernels get adapters
  # Frozen backbone: the outer loop trains only the memory parameters (M0, write head, projection,
  # control tokens, LoRA, learned inner lr); no backbone gradient is computed (stop_gradient) and
  # the optimizer leaves the backbone bit-identical (optax.set_to_zero).
  freeze_backbone: bool = False

  def __post_init__(self):
    t = self.lora_targets
    if isinstance(t, str):
      t = tuple(x.strip() for x in t.split(',') if x.strip())
    object.__setattr__(self, 'lora_targets', tuple(t))  # hashable even from a ConfigDict list

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def offset(self) -> int:
    """Number of positions before the first context/query token."""
    return self.num_memory + 2 * self.num_ctrl

  def step_modes(self, K: int) -> tuple[str, ...]:
    """The gradient mode of each of K inner steps."""
    if self.grad_mode != 'second' or self.last_k_second_order < 0:
      return (self.grad_mode,) * K
    n_second = min(self.last_k_second_order, K)
    return ('first',) * (K - n_second) + ('second',) * n_second

  def validate(self) -> None:
    def allowed(field, options):
      if getattr(self, field) not in options:
        raise ValueError(f'memory.{field}={getattr(self, field)!r} is not allowed; '
                         f'allowed: {list(options)}')
    allowed('grad_mode', GRAD_MODES)
    allowed('mem_proj', MEM_PROJ_MODES)
    allowed('inner_optimizer', INNER_OPTIMIZERS)
    allowed('learn_inner_lr', LEARN_INNER_LR)
    allowed('inner_impl', INNER_IMPLS)
    allowed('rmt_update', RMT_UPDATES)
    if self.num_memory < 0:
      raise ValueError(f'memory.num_memory must be >= 0 (memory vectors), got {self.num_memory}')
    if self.K < 0:
      raise ValueError(f'memory.K must be >= 0 (number of WRITE steps), got {self.K}')
    if self.num_ctrl < 0:
      raise ValueError(f'memory.num_ctrl must be >= 0, got {self.num_ctrl}')
    if self.inner_lr < 0:
      raise ValueError(f'memory.inner_lr must be >= 0, got {self.inner_lr}')
    if self.learn_inner_lr != 'none' and self.inner_lr <= 0:
      raise ValueError('memory.inner_lr must be > 0 when memory.learn_inner_lr is on '
                       f'(it is log-parametrised), got {self.inner_lr}')
    if self.clip_value < 0 or self.clip_norm < 0:
      raise ValueError('memory.clip_value and memory.clip_norm must be >= 0 (0 = off)')
    if self.last_k_second_order < -1:
      raise ValueError(f'memory.last_k_second_order must be >= -1, got {self.last_k_second_order}')
    if not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1):
      raise ValueError('memory.adam_b1 and memory.adam_b2 must be in [0, 1)')
    if self.adam_eps <= 0:
      raise ValueError(f'memory.adam_eps must be > 0, got {self.adam_eps}')
    if self.init_std < 0:
      raise ValueError(f'memory.init_std must be >= 0, got {self.init_std}')
    common.get_remat_policy(self.inner_remat, 'memory.inner_remat')
    if self.lora_rank < 0:
      raise ValueError(f'memory.lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}')
    if self.lora_rank:
      if self.method not in LORA_METHODS:
        raise ValueError(f'memory.lora_rank={self.lora_rank} needs a method with a WRITE pass that '
                         f'is not READ; allowed with memory.method in {list(LORA_METHODS)}, got '
                         f'{self.method!r}')
      if self.lora_alpha <= 0:
        raise ValueError(f'memory.lora_alpha must be > 0, got {self.lora_alpha}')
      if not self.lora_targets:
        raise ValueError('memory.lora_targets is empty; name the projections to adapt, e.g. '
                         "('q_proj', 'v_proj')")
    if self.lora_dropout != 0.0:
      raise ValueError(f'memory.lora_dropout={self.lora_dropout} is not supported: the adapters '
                       'are merged into the weights once per WRITE (W + alpha/r A@B, outside the '
                       'K-step scan), where dropout on their inputs cannot be expressed; '
                       'allowed: 0.0')


def memory_config_from(section) -> MemoryConfig:
  """From the `config.memory` section (ConfigDict or dict), with unknown keys named."""
  return from_section(MemoryConfig, section, 'memory', 'a memory')
