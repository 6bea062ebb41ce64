"""The static leaderboard: reads result files only and renders a self-contained site.

Entry point: :func:`leaderboard.site.build_site`. The package never imports defense
code; aggregation lives in :mod:`leaderboard.aggregate`, plots in
:mod:`leaderboard.plots`, rendering in :mod:`leaderboard.site`.
"""
from __future__ import annotations
