"""Benchmarks (``adaptune bench``): adaptune side by side with full fine-tuning, ``peft`` LoRA and AdapterHub
``adapters``; paired timing ratios, peak memory, trainable parameters and saved sizes. Never run by the tests
as a timing check: ``tests/test_benchmark.py`` runs the quick mode to check the machinery writes its files."""

from .suite import SECTIONS, Options, jobs, run_suite

__all__ = ["SECTIONS", "Options", "jobs", "run_suite"]
