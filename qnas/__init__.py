"""qnas: quantization-aware neural architecture search for edge CNNs.

Candidates are scored under fake quantization with parameters predicted by a graph hypernetwork,
so no candidate is trained during the search.
"""

from qnas.errors import QnasError

__version__ = "0.1.0"

__all__ = ["QnasError", "__version__"]
