"""The miniature model's data (captioned shape pictures), training and evaluation."""
