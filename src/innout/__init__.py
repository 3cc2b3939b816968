"""innout: remove an object from a 3D scene (In-N-Out, NeurIPS 2024)."""

# pycolmap ships its own zlib: imported before the system one, every later PNG write in
# the process aborts ("double free or corruption"). Loading zlib first avoids it.
import zlib  # noqa: F401

__version__ = "0.1.0"
