"""ResultWriterOperator: the last operator of every app; writes the app's structured result to its output folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from holoscan.core import ExecutionContext, InputContext, OutputContext
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from operators.app_result import AppResult

log = logging.getLogger(__name__)


class ResultWriterOperator(Operator):
    """Receives ``(AppResult, {array name: ndarray})`` on port ``result`` and writes them (see operators.app_result).

    Named inputs:
        result: a tuple ``(AppResult, dict[str, numpy.ndarray])``.
    """

    def __init__(self, fragment: Fragment, *args: object, output_folder: Path, **kwargs: object) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("result").condition(ConditionType.MESSAGE_AVAILABLE)

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        result, arrays = op_input.receive("result")
        self.write(result, arrays)

    def write(self, result: AppResult, arrays: dict[str, np.ndarray]) -> Path:
        path = result.write(self.output_folder, arrays)
        log.info("result written to %s: %s", path, result.summary)
        return path
