"""Evaluation at scale, without Gradio: POPE and OPOPE, answer parsers, statistics, the sharded
resumable harness and its results (issue 26). Entry points stay thin: ``python -m halviz.eval``,
``python -m halviz.pope``, ``python -m halviz.chair``."""
