"""Tests of backbones, preprocessing and the feature cache."""
