"""pt2 export: torch.export + AOTInductor packages (``torch._inductor.aoti_compile_and_package``).

AOTInductor compiles C++ at export time (needs a compiler, takes minutes) and the package is tied to
the torch version and CPU it was built with; load with ``torch._inductor.aoti_load_package`` or
``torch::inductor::AOTIModelPackageLoader`` in C++.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from cdp.export import metadata as md
from cdp.export.context import blame, export_context, intra_op_threads
from cdp.export.programs import export_programs
from cdp.export.wrappers import capture_summary


def export_pt2(model, enc, dec, enc_args, dec_args, out: Path, meta: dict, log: Callable[[str], None] = lambda s: None,
               threads: Optional[int] = None) -> dict:
    """Write encoder.pt2 / decoder.pt2 AOTInductor packages (+ embedded metadata as a side file); AOTInductor
    compiles with ``threads`` intra-op threads (default: the current count), as its generated code may
    depend on them."""

    enc_ep, dec_ep = export_programs(model, enc, dec, enc_args, dec_args)
    for role, program in (("encoder", enc_ep), ("decoder", dec_ep)):
        path = out / meta[role]["file"]
        tmp = path.with_name(f".tmp.{path.name}")  # AOTInductor wants the .pt2 suffix
        try:
            with export_context(), intra_op_threads(threads or torch.get_num_threads()):
                try:
                    torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
                except Exception as exc:
                    raise blame(exc, model, role) from None
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        md.atomic_write_text(out / f"{role}.pt2.json", json.dumps(md.embedded(meta, role), sort_keys=True) + "\n")
        log(f"{role}.pt2 compiled")
    return {"method": "torch.export + AOTInductor", "load": "torch._inductor.aoti_load_package", "torch_version": torch.__version__,
            "capture": capture_summary(enc)}
