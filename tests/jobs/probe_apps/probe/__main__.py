"""probe: counts its input files and writes an AppResult; its model bundle's ``behaviour`` makes it fail
(``raise``), run long (``sleep:<s>``) or die (``exit:<code>``), so the job machinery can be tested; its
``probability`` (default 1.0) is the one finding's probability, so two versions can agree or not (shadow runs)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from operators.app_result import AppResult
from operators.model_bundle import model_info, read_metadata


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-i", required=True)
    p.add_argument("-o", required=True)
    p.add_argument("-m", required=True)
    a = p.parse_args()
    meta = read_metadata(a.m)
    behaviour = str(meta.get("behaviour", "ok"))
    marker = meta.get("marker_dir")
    if marker:
        Path(marker, f"start-{os.getpid()}").write_text(a.i)
    if behaviour == "raise":
        raise RuntimeError("probe failure requested by its model bundle")
    if behaviour.startswith("sleep:"):
        time.sleep(float(behaviour.split(":")[1]))
    if behaviour.startswith("exit:"):
        sys.stderr.write("probe exiting as asked\n")
        os._exit(int(behaviour.split(":")[1]))
    files = sorted(f for f in Path(a.i).rglob("*") if f.is_file())
    info = model_info(a.m)
    probability = float(meta.get("probability", 1.0))
    result = AppResult(
        app={"name": "probe", "version": "0.0.1"}, model=info.as_dict(), notice=info.notice,
        inputs={"sop_instance_uids": [f.stem for f in files if f.suffix == ".dcm"]},
        measurements=[{"name": "input files", "code": {"system": "urn:probe", "code": "n", "display": "files"},
                       "value": len(files), "unit": "1"}],
        findings=[{"name": "anything", "code": {"system": "urn:probe", "code": "a", "display": "anything"},
                   "probability": probability, "threshold": 0.5, "present": probability >= 0.5,
                   "heatmap": "h.npy"}],
        summary=f"{len(files)} input file(s)",
        monitoring={"input_files": float(len(files))},
    )
    result.write(a.o, {"h.npy": np.full((2, 2), len(files), dtype=np.float32)})


main()
