"""Certificates: randomized smoothing (full and sequential CERTIFY) and Lipschitz margins.

The runner's entry point is :mod:`gauntlet.benchmark.certify`.
"""
