"""Scores of predicted masks against the truth (per slice, per case, pooled) and their intervals:
the numbers training validates on, decisions choose by and evaluation reports."""
