"""Synthetic TextZoom-style LR/HR word pairs (``python -m distill.synth``)."""
from .generate import SPLITS, SynthConfig, generate_split, main, parse_split_sizes
from .render import FontBank, find_fonts, render_word
from .words import WordSampler

__all__ = ["SPLITS", "SynthConfig", "generate_split", "main", "parse_split_sizes", "FontBank", "find_fonts",
           "render_word", "WordSampler"]
