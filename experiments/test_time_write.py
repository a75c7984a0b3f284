r"""Test-time writing into a frozen pretrained LM, no meta-training (SPEC §3; issue 13 item 2).

Each context is written into m memory vectors by K steps of gradient descent on the model's own
reconstruction loss of the context given [M; context] (GradMem's WRITE with no write head, no
projection, no control tokens); the weights are frozen and nothing is trained. Then the query is
answered from [M; query] alone. One WRITE trajectory to the largest K is read at every K of --ks:
K steps of the same descent from the same start are the first K steps of a longer one.

  python -m experiments.test_time_write --task=babi --n=50 --lrs=0.1,1,10
  python -m experiments.test_time_write --task=textrec --n=50
  python -m experiments.test_time_write --plot_only      # the figure from the rows written

Tasks:
  babi     bAbI QA<--babi_task> test questions: context = the story, query = --query
           ('Question: Where is Mary?\nAnswer: Mary is in the'), target = ' <answer>'. Baselines on the same questions:
           the story in the context ([story; newline; query]) and no context at all ([query]).
  textrec  spans of 8-64 tokens of the SQuAD paragraphs (`data.textrec`'s validation spans):
           reconstruct the span from [M] alone. Baseline: no context (the model's own prior).

Metrics per K (means over the questions / spans):
  em          every answer token is the argmax at its position (teacher forced), i.e. greedy
              decoding from [M; query] emits exactly the answer's tokens (textrec: the whole span)
  token_acc   share of answer (span) tokens that are the argmax
  answer_nll  mean negative log-likelihood of the answer tokens
  choice_acc  the right answer has the highest log-likelihood among the task's answer set (QA1:
              the 6 rooms); a small instruct model rarely answers bAbI in the exact words, so this
              is the informative metric for it (textrec: the same as em)
  write_loss  the reconstruction loss at M_K (per token, mean over contexts)

Rows are appended to --out (JSON lines); a configuration already there is skipped (resumable).
Progress lines give the rate and an ETA.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'smollm2-135m', 'pretrained name, .gguf file or HF directory')
flags.DEFINE_enum('task', 'babi', ['babi', 'textrec'], 'what is written')
flags.DEFINE_integer('babi_task', 1, 'bAbI task (1-20)')
flags.DEFINE_string('babi_dir', os.path.join(ROOT, '..', 'shared', 'data', 'babi'), 'bAbI release')
flags.DEFINE_string('squad', os.path.join(ROOT, '..', 'shared', 'data', 'squad',
                                          'dev-v1.1.json.gz'), 'SQuAD JSON for textrec spans')
flags.DEFINE_integer('n', 50, 'questions (spans) per point; the first n of the test split')
flags.DEFINE_integer('batch', 25, 'contexts written at once')
flags.DEFINE_integer('num_memory', 8, 'm')
flags.DEFINE_list('ks', ['0', '1', '2', '5', '10', '20', '50'], 'numbers of WRITE steps read')
flags.DEFINE_list('lrs', ['0.1', '1', '10'], 'inner learning rates (one trajectory each)')
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'adam'], 'inner optimizer (memory.inner_optimizer)')
flags.DEFINE_enum('init', 'mean', ['mean', 'zeros'], 'M_0: the mean input embedding, or zeros')
flags.DEFINE_string('dtype', 'float32', 'compute dtype')
flags.DEFINE_string('out', os.path.join(ROOT, 'benchmarks', 'results', 'test_time_write',
                                        'rows.jsonl'), 'JSON lines (appended)')
flags.DEFINE_string('query', 'Question: {question}\nAnswer: {subject} is in the',
                    'what follows the memory (or the story and a newline); {question}, and '
                    '{subject}: X of a question "Where is X?" (bAbI QA1-3)')
flags.DEFINE_bool('plot_only', False, 'only draw the figure from --out')


@dataclasses.dataclass
class Item:
  context: np.ndarray        # ids written into memory
  query: np.ndarray          # ids read after the memory
  targets: list[np.ndarray]  # candidate answers' ids; targets[0] is the right one
  text: str                  # for the log


def load_items(tokenizer) -> tuple[list[Item], str]:
  if FLAGS.task == 'babi':
    from gradmem_jax.data import babi
    data = babi.load_babi(FLAGS.babi_dir, FLAGS.babi_task, 'test')
    if FLAGS.n > len(data):
      raise ValueError(f'--n={FLAGS.n}: the QA{FLAGS.babi_task} test split has {len(data)}')
    examples = data.examples[:FLAGS.n]
    answers = sorted({ex.answer for ex in data.examples})  # the task's answer set (QA1: 6 rooms)
    items = []
    for ex in examples:
      story, question, answer = babi.render_example(ex)
      cands = [answer] + [a for a in answers if a != answer]
      subject = re.fullmatch(r'Where is (.+)\?', question)
      if '{subject}' in FLAGS.query and not subject:
        raise ValueError(f'--query uses {{subject}}, but {question!r} is not "Where is X?"')
      query = FLAGS.query.format(question=question, subject=subject and subject.group(1))
      items.append(Item(tokenizer.encode(story), tokenizer.encode(query),
                        [tokenizer.encode(f' {a}') for a in cands], f'{question} -> {answer}'))
    return items, (f'bAbI QA{FLAGS.babi_task} test, first {FLAGS.n} questions ({data.path}); '
                   f'{len(answers)} candidate answers')
  from gradmem_jax.data import textrec
  spans = textrec.text_reconstruction_spans(tokenizer, squad_paths=[FLAGS.squad]).valid
  if FLAGS.n > len(spans):
    raise ValueError(f'--n={FLAGS.n}: there are {len(spans)} validation spans')
  rng = np.random.default_rng(0)
  pick = sorted(rng.choice(len(spans), FLAGS.n, replace=False))
  items = [Item(spans[i].ids, np.zeros(0, np.int32), [spans[i].ids], spans[i].text[:40])
           for i in pick]
  return items, f'{FLAGS.n} of {len(spans)} SQuAD validation spans of 8-64 tokens ({FLAGS.squad})'


def pad(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  n = max(1, max(len(r) for r in rows))
  ids = np.full((len(rows), n), pad_id, np.int32)
  mask = np.zeros((len(rows), n), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
    mask[i, :len(r)] = 1
  return ids, mask


def candidate_rows(items: list[Item], prefixes: list[np.ndarray]):
  """One row per (item, candidate): prefix + candidate. -> rows, owner item, candidate index,
  target start, target length."""
  rows, owner, cand, start, length = [], [], [], [], []
  for i, (it, pre) in enumerate(zip(items, prefixes)):
    for c, t in enumerate(it.targets):
      rows.append(np.concatenate([pre, t]))
      owner.append(i)
      cand.append(c)
      start.append(len(pre))
      length.append(len(t))
  return rows, np.array(owner), np.array(cand), np.array(start), np.array(length)


def scored(logits: np.ndarray, qa: np.ndarray, owner, cand, start, length) -> dict:
  """Per-item metrics from logits [R, T, V] whose position t predicts qa[t], one row per (item,
  candidate): EM, token accuracy and NLL of the right answer (candidate 0), and whether the right
  answer has the highest log-likelihood of all candidates (`choice_acc`)."""
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  out = {'em': [], 'token_acc': [], 'answer_nll': [], 'choice_acc': []}
  total = {}
  for r in range(len(qa)):
    pos = np.arange(start[r], start[r] + length[r])
    lp = logp[r, pos, qa[r, pos]]
    total.setdefault(owner[r], []).append(float(lp.sum()))
    if cand[r] == 0:
      hit = logits[r, pos].argmax(-1) == qa[r, pos]
      out['em'].append(float(hit.all()))
      out['token_acc'].append(float(hit.mean()))
      out['answer_nll'].append(float(-lp.mean()))
  for i in sorted(total):
    out['choice_acc'].append(float(np.argmax(total[i]) == 0))
  return out


def mean_rows(parts: list[dict]) -> dict:
  return {k: float(np.mean([v for p in parts for v in p[k]])) for k in parts[0]}




class Progress:
  def __init__(self, total: int, what: str):
    self.total, self.done, self.what, self.t0 = total, 0, what, time.time()

  def step(self, n: int = 1, extra: str = '') -> None:
    self.done += n
    el = time.time() - self.t0
    rate = self.done / max(el, 1e-9)
    eta = (self.total - self.done) / max(rate, 1e-9)
    print(f'{self.what} {self.done}/{self.total} {rate * 60:.1f}/min eta {eta / 60:.1f} min '
          f'{extra}', flush=True)


def run():
  import jax
  import jax.numpy as jnp
  from gradmem_jax.memory import MemoryConfig, build_method
  from gradmem_jax.models import backbone_from_config, pretrained

  ks = sorted({int(k) for k in FLAGS.ks})
  if ks[0] < 0:
    raise ValueError(f'--ks must be >= 0, got {ks}')
  lrs = [float(x) for x in FLAGS.lrs]
  done = set()
  if os.path.exists(FLAGS.out):
    for line in open(FLAGS.out):
      r = json.loads(line)
      done.add(r['key'])
  base_key = dict(model=FLAGS.model, task=FLAGS.task, babi_task=FLAGS.babi_task, n=FLAGS.n,
                  num_memory=FLAGS.num_memory, dtype=FLAGS.dtype)

  def key(**kw):
    return json.dumps(dict(base_key, **kw), sort_keys=True)

  todo = [lr for lr in lrs if key(kind='gradmem', lr=lr, optimizer=FLAGS.optimizer,
                                   init=FLAGS.init, ks=ks) not in done]
  baselines = ['no_context'] + (['full_context'] if FLAGS.task == 'babi' else [])
  todo_base = [b for b in baselines if key(kind=b) not in done]
  if not todo and not todo_base:
    print(f'everything is already in {FLAGS.out}')
    return
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)

  t0 = time.time()
  model = pretrained.resolve_model_config({'pretrained': FLAGS.model, 'dtype': FLAGS.dtype})
  backbone = backbone_from_config(model)
  bb = pretrained.load_params(model, backbone)
  tokenizer = pretrained.tokenizer(model['pretrained'])
  items, source = load_items(tokenizer)
  pad_id = int(tokenizer.pad_id) if tokenizer.pad_id is not None else 0
  newline = tokenizer.encode('\n')
  print(f'loaded {FLAGS.model} in {time.time() - t0:.1f} s; {source}; context tokens '
        f'{min(len(i.context) for i in items)}-{max(len(i.context) for i in items)}', flush=True)

  def append(row):
    with open(FLAGS.out, 'a') as f:
      f.write(json.dumps(row) + '\n')

  batches = [items[i:i + FLAGS.batch] for i in range(0, len(items), FLAGS.batch)]

  # Baselines: the backbone alone on [story; query; target] or [query; target].
  @jax.jit
  def lm_logits(ids):
    x = backbone.embed(bb, ids)
    h = backbone.hidden(bb, x, jnp.arange(ids.shape[1]))
    return backbone.logits(bb, h)

  for name in todo_base:
    parts = []
    for b in batches:
      pre = [np.concatenate([it.context, newline, it.query]) if name == 'full_context'
             else it.query for it in b]
      rows, owner, cand, start, length = candidate_rows(b, pre)
      ids, _ = pad(rows, pad_id)
      logits = np.asarray(lm_logits(jnp.asarray(ids)), np.float32)
      # position t predicts ids[t + 1]. With no prefix at all (textrec, no context) the first
      # token has nothing to be predicted from and is not scored.
      skip = (start == 0).astype(int)
      shifted = np.zeros_like(logits)
      shifted[:, 1:] = logits[:, :-1]
      parts.append(scored(shifted, ids, owner, cand, start + skip, length - skip))
    row = dict(base_key, kind=name, key=key(kind=name), **mean_rows(parts), source=source)
    print(json.dumps(row), flush=True)
    append(row)

  if not todo:
    return
  cfg = MemoryConfig(num_memory=FLAGS.num_memory, K=1, write_head=False, mem_proj='none',
                     num_ctrl=0, freeze_backbone=True, inner_optimizer=FLAGS.optimizer,
                     grad_mode='none', inner_loss_weight=0.0)
  cfg.validate()
  method = build_method(backbone, cfg)
  d = backbone.hidden_size
  if FLAGS.init == 'mean':  # the mean input embedding over the vocabulary
    emb = backbone.embed(bb, jnp.arange(backbone.vocab_size)[None])[0]
    m0 = np.broadcast_to(np.asarray(emb, np.float32).mean(0), (FLAGS.num_memory, d))
  else:
    m0 = np.zeros((FLAGS.num_memory, d), np.float32)
  params = {'backbone': bb, 'memory': {'mem_init': jnp.asarray(m0)}}

  @jax.jit
  def start(ctx):
    fast = method.init_fast(params, ctx.shape[0])
    opt = ()
    if FLAGS.optimizer == 'adam':
      z = jax.tree_util.tree_map(jnp.zeros_like, fast)
      opt = (z, z)
    return (fast, opt), backbone.embed(bb, ctx[:, :-1])

  @jax.jit
  def step(carry, ctx_embeds, ctx, mask, k, lr):
    return method.inner_step(params, ctx_embeds, ctx, mask, None, True, 'none', carry, (k, lr),
                             loss_grad=False)

  @jax.jit
  def read(fast, qa):
    return method.read_logits(params, fast, qa)

  @jax.jit
  def final_loss(fast, ctx_embeds, ctx, mask):
    return method.write_loss(params, fast, ctx_embeds, ctx, mask)

  kmax = ks[-1]
  prog = Progress(len(todo) * len(batches) * kmax, f'WRITE steps ({FLAGS.task})')
  for lr in todo:
    per_k = {k: [] for k in ks}
    loss_k = {k: [] for k in ks}
    for b in batches:
      ctx, mask = pad([it.context for it in b], pad_id)
      rows, owner, cand, start_pos, length = candidate_rows(b, [it.query for it in b])
      qa, _ = pad(rows, pad_id)
      ctx, mask = jnp.asarray(ctx), jnp.asarray(mask)
      carry, ctx_embeds = start(ctx)
      for k in range(kmax + 1):
        if k in per_k:
          fast = carry[0]
          rowmem = {'memory': jnp.asarray(fast['memory'])[jnp.asarray(owner)]}
          logits = np.asarray(read(rowmem, jnp.asarray(qa)), np.float32)
          per_k[k].append(scored(logits, qa, owner, cand, start_pos, length))
          loss_k[k].extend(np.asarray(final_loss(fast, ctx_embeds, ctx, mask)).tolist())
        if k == kmax:
          break
        carry, (loss, _) = step(carry, ctx_embeds, ctx, mask, jnp.int32(k), jnp.float32(lr))
        prog.step(extra=f'lr {lr} k {k + 1} write loss {float(np.mean(loss)):.3f}')
    curve = [dict(K=k, write_loss=float(np.mean(loss_k[k])), **mean_rows(per_k[k])) for k in ks]
    row = dict(base_key, kind='gradmem', lr=lr, optimizer=FLAGS.optimizer, init=FLAGS.init, ks=ks,
               key=key(kind='gradmem', lr=lr, optimizer=FLAGS.optimizer, init=FLAGS.init, ks=ks),
               curve=curve, source=source)
    print(json.dumps(row), flush=True)
    append(row)


def plot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [json.loads(l) for l in open(FLAGS.out)]
  for task in sorted({r['task'] for r in rows}):
    rs = [r for r in rows if r['task'] == task]
    metric = 'em' if task == 'babi' else 'token_acc'
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rs:
      if r['kind'] != 'gradmem':
        continue
      ks = [max(c['K'], 0.5) for c in r['curve']]  # K=0 drawn at 0.5 on the log axis
      lab = f"lr {r['lr']:g} {r['optimizer']} init {r['init']} m={r['num_memory']}"
      a1.plot(ks, [100 * c[metric] for c in r['curve']], 'o-', label=lab)
      a2.plot(ks, [c['write_loss'] for c in r['curve']], 'o-', label=lab)
    for r in rs:
      if r['kind'] != 'gradmem':
        a1.axhline(100 * r[metric], ls='--', color='k' if r['kind'] == 'full_context' else 'gray',
                   label=r['kind'].replace('_', ' '))
    a1.set(xscale='log', xlabel='K (WRITE steps; 0 drawn at 0.5)',
           ylabel=f'{metric} (%)', title=f'{task}: answer from memory only')
    a2.set(xscale='log', xlabel='K', ylabel='WRITE loss (nats/token)',
           title='reconstruction loss at M_K')
    a1.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(os.path.dirname(FLAGS.out), f'{task}.png')
    fig.savefig(path, dpi=110)
    print(f'wrote {path}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.plot_only:
    run()
  if os.path.exists(FLAGS.out):
    plot()


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  app.run(main)
