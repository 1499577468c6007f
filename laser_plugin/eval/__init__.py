"""Benchmark evaluation: run the engine over dataset sequences, score against ground truth.

- :mod:`laser_plugin.eval.runner`: per-sequence reconstruction and scoring, dataset averages,
  ablation sweeps.
- :mod:`laser_plugin.eval.pointmap`: accuracy / completeness / normal consistency (7-Scenes,
  NRGBD), with the protocol restated.
- :mod:`laser_plugin.eval.protocol`: per-dataset settings and the paper's numbers.
- :mod:`laser_plugin.eval.report`: rich table and JSON.
"""
