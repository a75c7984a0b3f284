"""Decoders that take input embeddings, behind one small functional interface (`Backbone`).

Families register themselves (`models.base.FAMILIES`) when their module is imported; the imports
below are the built-in ones. A new family is one module that calls `base.register_family` plus
its import here.
"""
from gradmem_jax.models.base import (FAMILIES, Backbone, Family, HFSpec, backbone_from_config,
                                     register_family)
from gradmem_jax.models.gpt2 import GPT2Config, GPT2Decoder
from gradmem_jax.models.llama import LlamaConfig, LlamaDecoder
from gradmem_jax.models.mamba import MambaConfig, MambaDecoder

__all__ = ['Backbone', 'backbone_from_config', 'FAMILIES', 'Family', 'HFSpec', 'register_family',
           'LlamaConfig', 'GPT2Config', 'MambaConfig', 'LlamaDecoder', 'GPT2Decoder',
           'MambaDecoder']
