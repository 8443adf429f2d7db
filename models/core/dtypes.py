"""The floating-point types the models run in, by the short names node inputs use."""
from __future__ import annotations

import torch

from ..errors import MarionetteError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def check_dtype(dtype, what: str) -> torch.dtype:
    """`dtype` if it is one of DTYPES' values, else an error naming `what` would have run in it."""
    if dtype not in DTYPES.values():
        raise MarionetteError(f"Unsupported dtype {dtype} for the {what}.",
                              "Use torch.float16, torch.bfloat16 or torch.float32.")
    return dtype
