"""Uplink packet optimizer, training side: traces, simulator, gymnasium env, baselines, PPO.

The shipped policy (``policy.onnx`` + ``policy.json``) lives here too. Only `train` and `env`
need torch / gymnasium / stable-baselines3; `sim`, `traces`, `baselines` and `evaluate` run on
numpy so that ``gateway optimizer evaluate`` works with the ``[ml]`` extra alone.
"""
