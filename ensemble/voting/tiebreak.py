"""Tie-break policy names (placeholder: the voting branch's tiebreak.py replaces this file)."""
TIE_BREAKS = ("first", "random", "confidence", "abstain")
