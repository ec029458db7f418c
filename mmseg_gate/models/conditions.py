"""Moved to :mod:`gate_features.conditions` (DESIGN.md, "two layers"); the old path stays for old imports."""
from mmseg_gate._moved import alias

alias(__name__, 'gate_features.conditions')
