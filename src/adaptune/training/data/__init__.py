"""Datasets: file parsing (``files``), built-in datasets (``builtin``), splitting and checks (``datasets``)."""
