from .atomic import atomic_h5, remove_leftover_temps
from .inspect import H5State, describe_mismatches, geometry_mismatches, inspect_h5
from .locks import SlideLock

__all__ = [
    "H5State",
    "SlideLock",
    "atomic_h5",
    "describe_mismatches",
    "geometry_mismatches",
    "inspect_h5",
    "remove_leftover_temps",
]
