"""Moved to :mod:`gate_features.utils.finite` (DESIGN.md, "two layers"); this path stays."""
from mmseg_gate._moved import alias

alias(__name__, 'gate_features.utils.finite')
