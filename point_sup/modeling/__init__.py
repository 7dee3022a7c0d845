"""Modeling: shared point machinery and the point-supervised mask heads (registered on import)."""
