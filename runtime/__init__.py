"""tlc runtimes: the NumPy reference executor over tlc's IR (more backends arrive with later issues)."""
from .numpy_executor import check_inputs, run_graph

__all__ = ["run_graph", "check_inputs"]
