"""alloop: active learning with regularity tangents (SGDF) and the SLD query heuristic."""

__version__ = "0.1.0"
