"""Short SQuAD: the JSON reader, sentence cutting, the split by article, tokenizers, the official
answer scores, the runner on SQuAD data, and starting from a Hugging Face checkpoint.

Most tests use a small SQuAD-layout file generated here; `test_shipped_dev_set` reads the real
development set in ../shared/data/squad when this checkout has it beside it.
"""
from __future__ import annotations

import gzip
import json
import os

import jax
import numpy as np
import pytest

from configs import short_squad
from gradmem_jax.data import build_task
from gradmem_jax.data.squad import (SquadTask, SquadTaskConfig, answer_sentences, exact_match,
                                    f1_score, load_squad, normalize_answer, sentence_spans)
from gradmem_jax.data.text import ByteTokenizer, HFTokenizer, make_tokenizer
from gradmem_jax.training import build_experiment, train_and_evaluate
from tests.conftest import forbid_random_init

PEOPLE = ['Ada', 'Bela', 'Cyril', 'Dora', 'Emil', 'Fay', 'Gus', 'Hana']
CITIES = ['Paris', 'Lima', 'Oslo', 'Kyoto', 'Quito', 'Perth', 'Accra', 'Riga']


def _paragraph(i: int) -> tuple[str, list[tuple[str, str]]]:
  p, c, y = PEOPLE[i % 8], CITIES[(3 * i) % 8], 1900 + 7 * i
  text = (f'{p} was born in {c} in {y}. After school, {p} studied the violin for six years! '
          f'Did {p} enjoy it? Most of all, {p} liked the old harbour of {c}.')
  qas = [(f'Where was {p} born?', c), (f'When was {p} born?', str(y)),
         (f'What did {p} study?', 'the violin')]
  return text, qas


def write_fixture(path, n_articles: int = 6, per_article: int = 2, impossible: bool = False,
                  gz: bool = False) -> str:
  data, k = [], 0
  for a in range(n_articles):
    paragraphs = []
    for j in range(per_article):
      text, qas = _paragraph(a * per_article + j)
      entries = []
      for q, ans in qas:
        entries.append({'id': f'q{k}', 'question': q,
                        'answers': [{'text': ans, 'answer_start': text.index(ans)}]})
        k += 1
      if impossible:
        entries.append({'id': f'q{k}', 'question': 'Who built the harbour?', 'answers': [],
                        'is_impossible': True})
        k += 1
      paragraphs.append({'context': text, 'qas': entries})
    data.append({'title': f'Article_{a}', 'paragraphs': paragraphs})
  root = {'version': '1.1', 'data': data}
  path = str(path)
  if gz:
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      json.dump(root, f)
  else:
    with open(path, 'w') as f:
      json.dump(root, f)
  return path


@pytest.fixture
def squad_file(tmp_path):
  return write_fixture(tmp_path / 'squad.json')


# ------------------------------------------------------------------------------------------------
# Scores.


def test_official_normalisation_em_and_f1():
  assert normalize_answer('The  Cat, sat!') == 'cat sat'
  assert normalize_answer('an Apple a day') == 'apple day'
  assert exact_match('the Violin.', ['violin']) == 1.0
  assert exact_match('violins', ['violin', 'a fiddle']) == 0.0
  # precision 2/2, recall 2/4 -> F1 = 2/3; the best of several truths counts
  np.testing.assert_allclose(f1_score('the cat sat', ['cat sat on mat']), 2 / 3)
  np.testing.assert_allclose(f1_score('the cat sat', ['dog', 'cat sat on mat']), 2 / 3)
  assert f1_score('blue', ['red']) == 0.0
  # unanswerable (no gold answers): only the empty prediction is right
  assert exact_match('', []) == 1.0 and exact_match('x', []) == 0.0
  assert f1_score('', []) == 1.0 and f1_score('x', []) == 0.0


# Hand-computed from the official definition (SQuAD v1.1 evaluate script): normalise (lower case,
# drop punctuation, drop the articles a/an/the, collapse white space), EM = the normalised strings
# are equal, F1 = the harmonic mean of token precision and recall over the multiset of common
# tokens; both the maximum over the gold answers.
HAND_SCORED = [
    # prediction, gold answers, EM, F1, how F1 was worked out
    ('The Eiffel Tower', ['Eiffel Tower'], 1.0, 1.0, 'article dropped: same tokens'),
    ('an apple', ['the apple.'], 1.0, 1.0, 'articles and punctuation dropped: "apple" both'),
    ('  Denver   BRONCOS!! ', ['Denver Broncos'], 1.0, 1.0, 'case, punctuation, white space'),
    ("Saint-Denis's", ['saintdeniss'], 1.0, 1.0, 'punctuation removed inside words, no space'),
    ('Denver Broncos won', ['Denver Broncos'], 0.0, 0.8, 'P=2/3 R=2/2 -> 2*(2/3)/(5/3) = 4/5'),
    ('in 1900 in Paris', ['Paris, France'], 0.0, 1 / 3, 'common {paris}: P=1/4 R=1/2 -> 1/3'),
    ('Paris', ['the city of Paris'], 0.0, 0.5, 'gold city|of|paris: P=1 R=1/3 -> 1/2'),
    ('the the cat cat', ['a cat'], 0.0, 2 / 3, 'pred cat|cat, gold cat: P=1/2 R=1 -> 2/3'),
    ('cat cat dog', ['cat dog dog'], 0.0, 2 / 3, 'multiset: common {cat:1, dog:1}: P=R=2/3'),
    ('cat cat', ['cat cat dog'], 0.0, 0.8,
     'multiset: common {cat:2}: P=2/2 R=2/3 -> 4/5 (an overlap of sets would give 2/5)'),
    ('blue whale', ['red fox'], 0.0, 0.0, 'no common token'),
    ('the', ['Paris'], 0.0, 0.0, 'prediction empty after normalisation'),
    ('Lima, Peru', ['Peru', 'Lima', 'the Lima of Peru'], 0.0, 0.8,
     'best gold is the third, lima|of|peru: P=2/2 R=2/3 -> 4/5 (the others: P=1/2 R=1 -> 2/3)'),
    ('Northern Italy', ['Italy', 'northern italy!', 'north'], 1.0, 1.0, 'the second gold matches'),
    ('four', ['4', 'four'], 1.0, 1.0, 'no number normalisation: only "four" matches'),
]


@pytest.mark.parametrize('pred, golds, em, f1, why', HAND_SCORED, ids=[c[4] for c in HAND_SCORED])
def test_em_and_f1_on_hand_scored_predictions(pred, golds, em, f1, why):
  assert exact_match(pred, golds) == em
  np.testing.assert_allclose(f1_score(pred, golds), f1, rtol=1e-12, atol=0)


def test_em_and_f1_averages_on_a_small_prediction_set():
  # Mean over questions as the official script reports them (x100).
  cases = [c[:2] for c in HAND_SCORED]
  em = 100 * np.mean([exact_match(p, g) for p, g in cases])
  f1 = 100 * np.mean([f1_score(p, g) for p, g in cases])
  np.testing.assert_allclose(em, 100 * 6 / 15)
  np.testing.assert_allclose(f1, 100 * (6 + 0.8 + 1 / 3 + 0.5 + 2 / 3 + 2 / 3 + 0.8 + 0.8) / 15)


# ------------------------------------------------------------------------------------------------
# Reading and cutting.


def test_sentences_and_the_answer_sentence():
  text, _ = _paragraph(0)
  spans = sentence_spans(text)
  assert [text[s:e] for s, e in spans] == [
      'Ada was born in Paris in 1900.', 'After school, Ada studied the violin for six years!',
      'Did Ada enjoy it?', 'Most of all, Ada liked the old harbour of Paris.']
  start = text.index('the violin')
  assert answer_sentences(text, start, len('the violin')) == spans_text(text, spans, 1)
  # A span across a sentence break takes both sentences.
  start = text.index('1900.')
  cut = answer_sentences(text, start, len('1900. After'))
  assert cut.startswith('Ada was born') and cut.endswith('six years!')


def spans_text(text, spans, i):
  return text[spans[i][0]:spans[i][1]]


def test_load_reads_json_and_gzip(tmp_path):
  a = load_squad(write_fixture(tmp_path / 'a.json'))
  b = load_squad(write_fixture(tmp_path / 'b.json.gz', gz=True))
  assert a == b and len(a) == 6 * 2 * 3
  q = a[0]
  assert q.qid == 'q0' and q.answers == ('Paris',) and q.paragraph[q.answer_start:].startswith('Paris')


@pytest.mark.parametrize('breakage, match', [
    (lambda r: r['data'][0]['paragraphs'][0].pop('qas'), r"data\[0\]\.paragraphs\[0\]: missing field 'qas'"),
    (lambda r: r['data'][1]['paragraphs'][1]['qas'][0]['answers'][0].update(answer_start=3),
     r"qas\[0\]\.answers\[0\] \(id q9\): answer_start=3 does not point"),
    (lambda r: r['data'][0].update(title=5), r"data\[0\]\.title: expected str"),
    (lambda r: r['data'][0]['paragraphs'][0]['qas'][1].update(id='q0'), 'duplicate question id'),
    (lambda r: r['data'][0]['paragraphs'][0]['qas'][0].update(answers=[]), 'no answers and not'),
])
def test_bad_files_name_the_field(tmp_path, breakage, match):
  path = write_fixture(tmp_path / 's.json')
  root = json.load(open(path))
  breakage(root)
  json.dump(root, open(path, 'w'))
  with pytest.raises(ValueError, match=match):
    load_squad(path)


def test_missing_and_non_json_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='data.path'):
    load_squad(str(tmp_path / 'nope.json'))
  (tmp_path / 'bad.json').write_text('{not json')
  with pytest.raises(ValueError, match='not readable as'):
    load_squad(str(tmp_path / 'bad.json'))


def _damaged_file(tmp_path, kind):
  """A SQuAD file damaged as a researcher meets it; returns (path, words the error must hold)."""
  good = tmp_path / 'good.json.gz'
  write_fixture(good, gz=True)
  raw = good.read_bytes()
  plain = gzip.decompress(raw)
  cases = {
      'truncated_gz': ('s.json.gz', raw[:len(raw) // 2], 'gzip stream is truncated'),
      'gz_cut_after_header': ('s.json.gz', raw[:12], 'truncated'),
      'gz_crc_garbled': ('s.json.gz', raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:-4]) + raw[-4:],
                         'corrupt gzip data'),
      'gz_body_garbled': ('s.json.gz', raw[:20] + bytes(b ^ 0x5A for b in raw[20:60]) + raw[60:],
                          'corrupt gzip data'),
      'not_gzip_named_gz': ('s.json.gz', plain, 'not gzip-compressed'),
      'empty_gz': ('s.json.gz', b'', 'empty'),
      'empty_json': ('s.json', b'', 'empty'),
      'white_space_only': ('s.json', b'  \n\n', 'white space'),
      'gzip_of_nothing': ('s.json.gz', gzip.compress(b''), 'white space'),
      'truncated_json': ('s.json', plain[:len(plain) // 2], 'truncated?'),
      'invalid_json': ('s.json', b'{"data": [}', 'invalid JSON at line 1 column 11'),
      'not_utf8': ('s.json', b'{"data": "\xff\xfe"}', 'not UTF-8'),
      'html_error_page': ('s.json', b'<html><body>404 Not Found</body></html>', 'invalid JSON'),
      'json_list': ('s.json', b'[1, 2, 3]', 'got a JSON array'),
      'json_string': ('s.json', b'"data"', 'got a JSON string'),
      'json_null': ('s.json', b'null', 'got JSON null'),
      'no_data_key': ('s.json', b'{"version": "1.1"}', 'without a "data" list'),
      'data_not_a_list': ('s.json', b'{"data": {"title": "x"}}', '"data" is a JSON object'),
      'data_empty': ('s.json', b'{"data": []}', 'holds no questions'),
      'article_not_an_object': ('s.json', b'{"data": [[1]]}', "data[0]: missing field 'title'"),
  }
  name, content, words = cases[kind]
  path = tmp_path / name
  path.write_bytes(content)
  return str(path), words


@pytest.mark.parametrize('kind', [
    'truncated_gz', 'gz_cut_after_header', 'gz_crc_garbled', 'gz_body_garbled',
    'not_gzip_named_gz', 'empty_gz', 'empty_json', 'white_space_only', 'gzip_of_nothing',
    'truncated_json', 'invalid_json', 'not_utf8', 'html_error_page', 'json_list', 'json_string',
    'json_null', 'no_data_key', 'data_not_a_list', 'data_empty', 'article_not_an_object'])
def test_damaged_data_files_raise_value_error_naming_path_and_expectation(tmp_path, kind):
  path, words = _damaged_file(tmp_path, kind)
  with pytest.raises(ValueError) as info:
    load_squad(path)
  msg = str(info.value)
  assert path in msg and words in msg, msg
  if kind not in ('data_empty', 'article_not_an_object'):
    assert 'SQuAD' in msg  # what was expected


def test_gzip_content_is_read_whatever_the_name(tmp_path):
  good = write_fixture(tmp_path / 'a.json')
  packed = tmp_path / 'b.json'
  packed.write_bytes(gzip.compress(open(good, 'rb').read()))
  assert load_squad(str(packed)) == load_squad(good)


# ------------------------------------------------------------------------------------------------
# The task.


def test_split_by_article_is_disjoint_deterministic_and_complete(squad_file):
  task = SquadTask(SquadTaskConfig(path=squad_file, val_fraction=0.34))
  again = SquadTask(SquadTaskConfig(path=squad_file, val_fraction=0.34))
  other = SquadTask(SquadTaskConfig(path=squad_file, val_fraction=0.34, split_seed=1))
  assert len(task.val_titles) == 2 and task.val_titles == again.val_titles
  assert task.val_titles != other.val_titles
  questions = {q.qid: q for q in load_squad(squad_file)}
  train_ids = {s.qid for s in task.train_set}
  val_ids = {s.qid for s in task.validation_set()}
  assert not train_ids & val_ids and len(train_ids | val_ids) == len(questions)  # nothing dropped
  train_paras = {questions[i].paragraph for i in train_ids}
  assert not train_paras & {questions[i].paragraph for i in val_ids}
  assert all(questions[i].title in task.val_titles for i in val_ids)


def test_samples_hold_the_answer_and_end_with_eos(squad_file):
  task = SquadTask(SquadTaskConfig(path=squad_file))
  tok = task.tokenizer
  for s in task.train_set + task.validation_set():
    context = tok.decode(s.context)
    assert s.answers[0] in context and len(sentence_spans(context)) == 1
    assert s.target[-1] == tok.eos_id and tok.decode(s.target) == ' ' + s.answers[0]
    assert tok.decode(s.query).startswith('Question: ') and tok.decode(s.query).endswith('Answer:')
  # Every sample of the first epoch exactly once, in a seed-dependent order.
  n = len(task.train_set)
  ids = [task.train_sample(i).qid for i in range(n)]
  assert sorted(ids) == sorted(s.qid for s in task.train_set) and ids != [s.qid for s in task.train_set]


def test_length_grouping_keeps_every_sample_and_groups_lengths(tmp_path):
  path = write_fixture(tmp_path / 'p.json', n_articles=20, per_article=4)
  plain = SquadTask(SquadTaskConfig(path=path, context='paragraph', length_window=0))
  grouped = SquadTask(SquadTaskConfig(path=path, context='paragraph', length_window=64,
                                      length_block=8))
  n = len(grouped.train_set)
  for task in (plain, grouped):
    assert sorted(task.train_sample(i).qid for i in range(n)) == sorted(s.qid for s in task.train_set)
  spread = lambda t: np.mean([np.ptp([len(t.train_sample(i).context) for i in range(b, b + 8)])
                              for b in range(0, n - 8, 8)])
  assert spread(grouped) < 0.5 * spread(plain)
  assert [grouped.train_sample(i).qid for i in range(n)] != [
      grouped.train_sample(n + i).qid for i in range(n)]  # epochs differ


def test_batches_bucket_and_never_truncate(squad_file):
  task = SquadTask(SquadTaskConfig(path=squad_file))
  _, batch = next(task.train_batches(4))
  assert task.context_len == 56  # the longest sentence (bytes), rounded up to 8
  assert batch['context'].shape == (4, 56) and batch['qa'].shape[1] == task.qa_len
  long = SquadTask(SquadTaskConfig(path=squad_file, context='paragraph'))
  assert long.context_len > 128
  assert next(long.train_batches(4))[1]['context'].shape[1] == min(256, long.context_len)
  assert (batch['target_mask'].sum(1) >= 2).all()
  flat = SquadTask(SquadTaskConfig(path=squad_file, bucket=False))
  assert next(flat.train_batches(4))[1]['context'].shape[1] == flat.context_len
  with pytest.raises(ValueError, match=r'data.context_len=8 is shorter than question q\d+'):
    SquadTask(SquadTaskConfig(path=squad_file, context_len=8))
  with pytest.raises(ValueError, match='data.n_val=999 exceeds'):
    SquadTask(SquadTaskConfig(path=squad_file, n_val=999))
  # Evaluation batches cover every validation question once; padding rows are not scored.
  batches = task.eval_batches(4)
  assert sum(int(b['target_mask'].any(1).sum()) for b in batches) == len(task.validation_set())


def test_unanswerable_questions(tmp_path):
  path = write_fixture(tmp_path / 'v2.json', impossible=True)
  with pytest.raises(ValueError, match='unanswerable.*data.context="paragraph"'):
    SquadTask(SquadTaskConfig(path=path))
  task = SquadTask(SquadTaskConfig(path=path, context='paragraph'))
  empty = [s for s in task.train_set if not s.answers]
  assert task.n_unanswerable == 12 and empty and all(list(s.target) == [task.eos_id] for s in empty)


@pytest.mark.parametrize('field, value, match', [
    ('path', '', 'data.path is empty'), ('context', 'page', 'data.context'),
    ('val_fraction', 1.0, 'data.val_fraction'), ('qa_len', -1, 'data.qa_len'),
])
def test_bad_task_config(squad_file, field, value, match):
  with pytest.raises(ValueError, match=match):
    SquadTaskConfig(**{'path': squad_file, field: value}).validate()


def test_config_rejects_unknown_keys(squad_file):
  with pytest.raises(ValueError, match='data.n_pairs is not a squad task option'):
    build_task({'task': 'squad', 'path': squad_file, 'n_pairs': 4})
  with pytest.raises(ValueError, match="data.task='nope' is not a known task"):
    build_task({'task': 'nope'})


# ------------------------------------------------------------------------------------------------
# Tokenizers.


def test_byte_tokenizer_round_trip():
  tok = make_tokenizer('bytes')
  text = 'Ünïcode “quotes” and 日本'
  ids = tok.encode(text)
  assert ids.min() >= 4 and ids.max() < tok.vocab_size == 260
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([ids, [tok.eos_id, tok.pad_id]])) == text
  with pytest.raises(ValueError, match='outside the vocabulary'):
    tok.decode([300])


def _save_hf_tokenizer(directory, texts):
  tokenizers = pytest.importorskip('tokenizers')
  transformers = pytest.importorskip('transformers')
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<|endoftext|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|endoftext|>')
  fast.save_pretrained(directory)
  return len(fast)


def test_hf_tokenizer_from_a_local_directory(tmp_path):
  texts = [_paragraph(i)[0] for i in range(8)]
  n = _save_hf_tokenizer(tmp_path / 'tok', texts)
  tok = HFTokenizer(str(tmp_path / 'tok'))
  assert tok.vocab_size == n and tok.pad_id == tok.eos_id
  ids = tok.encode(' the violin in Oslo')
  assert tok.decode(ids) == ' the violin in Oslo' and ids.max() < n
  with pytest.raises(FileNotFoundError, match='data.tokenizer'):
    HFTokenizer(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='data.tokenizer'):
    HFTokenizer(str(tmp_path / 'empty'))


# ------------------------------------------------------------------------------------------------
# The runner.


RUN = ('steps=4', 'batch_size=4', 'm=2', 'train.eval_every=2', 'train.checkpoint_every=2',
       'eval.batch_size=8', 'train.log_every_s=0.0', 'optim.warmup_steps=1')
SMALL_LLAMA = ('model.hidden_size=16', 'model.intermediate_size=32', 'model.num_layers=1',
               'model.num_heads=2', 'model.num_kv_heads=2')


def _tiny(path, *extra, model=SMALL_LLAMA):
  return short_squad.get_config(','.join([*extra, f'path={path}', *RUN, *model]))


def test_runner_trains_on_squad_and_generates_answers(tmp_path, squad_file):
  results = train_and_evaluate(_tiny(squad_file), str(tmp_path / 'run'))
  assert results['task'] == 'squad' and results['steps'] == 4
  assert np.isfinite(results['final']['target_loss'])
  from gradmem_jax.training import evaluate
  rows = evaluate.evaluate_run(str(tmp_path / 'run'), [0, 1],
                               evaluators=['teacher_forced', 'generate'],
                               predictions_dir=str(tmp_path / 'preds'))
  assert [r['K_eval'] for r in rows] == [0, 1] and all(0 <= r['gen_f1'] <= 1 for r in rows)
  lines = (tmp_path / 'preds' / 'predictions_K1.jsonl').read_text().splitlines()
  assert len(lines) == len(build_task(_tiny(squad_file).data).validation_set())


def test_default_config_points_at_the_shipped_dev_set():
  config = short_squad.get_config()
  assert config.data.path.endswith(os.path.join('shared', 'data', 'squad', 'dev-v1.1.json.gz'))
  assert config.memory.num_memory == 32


def test_start_from_a_hugging_face_checkpoint(tmp_path, squad_file, monkeypatch):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  ckpt = tmp_path / 'gpt2'
  texts = [_paragraph(i)[0] + ' Question: Where? Answer:' for i in range(12)]
  vocab = _save_hf_tokenizer(ckpt, texts)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256))
  model.save_pretrained(ckpt, safe_serialization=True)
  config = _tiny(squad_file, 'gpt2', f'hf_checkpoint={ckpt}', 'optim.micro_batch_size=0',
                 model=('model.dtype=float32',))
  exp = build_experiment(config)
  assert exp.backbone.kind == 'gpt2' and exp.backbone.vocab_size == vocab
  assert exp.backbone.hidden_size == 32 and exp.task.vocab_size == vocab
  from gradmem_jax.training.train import pretrained_params
  params = pretrained_params(exp, jax.random.PRNGKey(0))
  wte = model.transformer.wte.weight.detach().numpy()
  np.testing.assert_allclose(np.asarray(params['backbone']['wte']['embedding']), wte, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(params['memory']['write_head']), wte.T, rtol=1e-6)
  # The run starts from the checkpoint's weights without first drawing random ones to throw away.
  forbid_random_init(monkeypatch)
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 4 and np.isfinite(results['final']['target_loss'])
  bad = _tiny(squad_file, 'gpt2', model=())
  with pytest.raises(ValueError, match="data.tokenizer='model' needs model.hf_checkpoint"):
    build_experiment(bad)


# ------------------------------------------------------------------------------------------------
# The real development set (when ../shared/data is beside this checkout).

SHIPPED = short_squad.SHARED_SQUAD


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason='../shared/data/squad is not here')
def test_shipped_dev_set():
  questions = load_squad(SHIPPED)
  assert len(questions) == 10570 and len({q.title for q in questions}) == 48
  task = SquadTask(SquadTaskConfig(path=SHIPPED))
  assert len(task.train_set) + len(task.validation_set()) == 10570
  tok = task.tokenizer
  for s in task.train_set[:2000] + task.validation_set():
    assert s.answers[0] in tok.decode(s.context)
