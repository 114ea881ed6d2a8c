"""Submission stage: Kaggle notebook, packaging, local scoring.

Kept import-free: the Kaggle notebook imports submission.infer from the packaged dataset.
"""
