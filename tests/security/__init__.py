"""Attacks by the parties Chiron distrusts, played against the real components."""
