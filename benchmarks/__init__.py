"""Benchmarks: run each as a module from the repository root, e.g. ``python -m benchmarks.strategies``.

Shared pieces live in the private modules (``_harness.py`` for the distributed strategy benchmarks,
``_landscape_common.py`` for the sharpness ones). Results and the commands that produced them: ``RESULTS.md``.
"""
