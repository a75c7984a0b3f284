"""Outer-loop training: `train_and_evaluate(config, workdir)` and its pieces."""
from gradmem_jax.training.train import (Evaluator, Experiment, build_experiment, init_state,
                                        make_eval_step, make_train_step, train_and_evaluate)

__all__ = ['Evaluator', 'Experiment', 'build_experiment', 'init_state', 'make_eval_step',
           'make_train_step', 'train_and_evaluate']
