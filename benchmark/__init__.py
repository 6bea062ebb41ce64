"""The harness: manifests, the runner and its engine, scoring, certification, result files
(installed as :mod:`gauntlet.benchmark`; see docs/engine.md)."""
