"""MorphometryLib: bone micro-structure and vessel morphometry in physical units (exact and differentiable).

Layering: imports only :mod:`VolGANCore` below it; never Slicer. The measures themselves arrive with the
MorphometryLogic issue; this package is the single home for them (no other package re-implements them).
"""
