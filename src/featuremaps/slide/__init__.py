"""Whole-slide feature maps (see featuremaps.commands.slide)."""
