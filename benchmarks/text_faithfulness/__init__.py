"""Faithfulness on text with ground-truth evidence tokens (issue 12, part 5)."""
