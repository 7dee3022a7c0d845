"""Data: P_N annotation simulation, point-annotated dataset registration, the point-aware mapper."""
