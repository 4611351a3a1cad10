from .geometry import TileGeometry, plan_geometry, validate_request
from .lattice import TissueLattice

__all__ = ["TileGeometry", "TissueLattice", "plan_geometry", "validate_request"]
