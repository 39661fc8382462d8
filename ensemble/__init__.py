"""emergency-ensemble: four audio models vote on whether an emergency is happening.

This package imports nothing on purpose: `ensemble.core` is the shared base that every member
builds on, and the ensemble reaches members only through `class_path` strings in `configs/`.
"""
