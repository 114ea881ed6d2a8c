"""Data stage: dataset download, layout checks, the feature definition and the feature cache.

Kept import-free: the Kaggle notebook imports data.features from the packaged dataset.
"""
