"""Moved to :mod:`gate_features.prompts` (DESIGN.md, "two layers"); the old path stays for old imports."""
from mmseg_gate._moved import alias

alias(__name__, 'gate_features.prompts')
