"""Slicer-tier helpers shared by the three module widgets (dependency installation, progress bridging).

Unlike the ``*Lib`` packages this package is for the Slicer application: :mod:`.dependencies` and
:mod:`.widgets` import ``slicer``/``qt`` inside their functions only, so importing the package is cheap.
"""
