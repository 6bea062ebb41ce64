"""The static leaderboard: reads result files only and renders a self-contained site.

Entry point: :func:`gauntlet.leaderboard.site.build_site`. The package never imports defense
code; loading and checking result files lives in :mod:`gauntlet.leaderboard.board`, failed jobs
in :mod:`gauntlet.leaderboard.job_errors`, the per-example worst case and its exact 95%
intervals in :mod:`gauntlet.leaderboard.worst`, claim verdicts in :mod:`gauntlet.leaderboard.claims`,
aggregation and ranking in :mod:`gauntlet.leaderboard.aggregate`, the per-defense page's tables in :mod:`gauntlet.leaderboard.details`, plots in
:mod:`gauntlet.leaderboard.plots`, rendering in :mod:`gauntlet.leaderboard.site`.
"""
from __future__ import annotations
