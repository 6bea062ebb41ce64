"""Reusable defense building blocks, model architectures and training recipes.

A defense never imports an attack (DESIGN.md): the attacks adapt to what these
modules declare (``differentiable``, ``approximation``, ``randomized``).
"""
