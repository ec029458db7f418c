"""Moved to :mod:`gate_features.families` (DESIGN.md, "two layers"); this path stays."""
from mmseg_gate._moved import alias

alias(__name__, 'gate_features.families')
