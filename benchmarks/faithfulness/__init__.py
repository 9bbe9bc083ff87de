"""Faithfulness benchmark: synthetic data with ground-truth masks, small timm models, training."""
