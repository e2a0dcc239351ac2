"""Adapter methods: one module each (bottleneck, fusion, ...), built on ``adaptune.core`` only.

Registry: each method module defines a ``METHOD`` (``core.contract.Method``); registering it here is the one
line a new method adds outside its own file. What that file must provide is written down in the docstring of
``adaptune.core.contract``; ``tests/test_contract.py`` shows a complete toy method.
"""

from ..core.contract import register_method
from . import bottleneck, compacter, ia3, invertible, lora, mix, prefix, prompt

register_method(bottleneck.METHOD)
register_method(lora.METHOD)
register_method(ia3.METHOD)
register_method(prompt.METHOD)
register_method(prefix.METHOD)
register_method(compacter.METHOD)
register_method(invertible.METHOD)
register_method(mix.METHOD)
