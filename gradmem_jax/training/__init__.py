"""Outer-loop training: `train_and_evaluate(config, workdir)` and its pieces."""
from gradmem_jax.training.evaluators import EVALUATORS, TeacherForced, build_evaluators
from gradmem_jax.training.experiment import (Experiment, abstract_state, build_experiment,
                                             init_state)
from gradmem_jax.training.steps import make_eval_step, make_train_step
from gradmem_jax.training.train import train_and_evaluate

__all__ = ['EVALUATORS', 'TeacherForced', 'build_evaluators', 'Experiment', 'abstract_state',
           'build_experiment', 'init_state', 'make_eval_step', 'make_train_step',
           'train_and_evaluate']
