"""innout: remove an object from a 3D scene (In-N-Out, NeurIPS 2024)."""

__version__ = "0.1.0"
