"""The static leaderboard: reads result files only and renders a self-contained site.

Entry point: :func:`leaderboard.site.build_site`. The package never imports defense
code; loading and checking result files lives in :mod:`leaderboard.board`, failed jobs
in :mod:`leaderboard.job_errors`, the per-example worst case and its exact 95%
intervals in :mod:`leaderboard.worst`, claim verdicts in :mod:`leaderboard.claims`,
aggregation and ranking in :mod:`leaderboard.aggregate`, the per-defense page's tables in :mod:`leaderboard.details`, plots in
:mod:`leaderboard.plots`, rendering in :mod:`leaderboard.site`.
"""
from __future__ import annotations
