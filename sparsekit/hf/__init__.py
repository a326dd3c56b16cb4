"""The thin Hugging Face layer: find blocks and prunable layers, load and save models."""
