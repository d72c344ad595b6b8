"""The export command's options: one object that export, verification and the CLI share."""
import dataclasses
from typing import Optional, Sequence, Tuple

from runtime.bundle.manifest import FORMATS

from .compile import JETSON_OPSET
from .verify import BATCH_SIZES, DEFAULT_ATOL, DEFAULT_RTOL


@dataclasses.dataclass
class ExportOptions:
    weights: Optional[str] = None          # a state-dict file (None: the model's default, or --random-init)
    random_init: bool = False
    formats: Sequence[str] = FORMATS
    opset: int = JETSON_OPSET
    out_dir: str = "artifacts"
    input_shape: Optional[Tuple[int, ...]] = None
    atol: float = DEFAULT_ATOL            # verification: max |diff| <= atol + rtol * max |reference|
    rtol: float = DEFAULT_RTOL
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    batch_sizes: Sequence[int] = BATCH_SIZES
    max_tensors: int = 1                  # segments: also list the cuts where up to this many tensors cross
    trace_module: Optional[str] = None    # export this submodule of the model (what torch.fx can trace) instead
    leaf_modules: Sequence[str] = ()      # module classes torch.fx calls whole instead of tracing into
    postprocess: bool = False             # a detector's heads, anchors and NMS after the tail (models/detection.py)
