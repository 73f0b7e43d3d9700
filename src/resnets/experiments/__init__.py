"""The paper's experiments, reproduced end to end: ``degradation`` (plain nets vs ResNets, Figures 6-7)."""

from .degradation import PAPER_TABLE6, DegradationOptions, DegradationResult, run_degradation
from .responses import LayerResponse, response_stds

__all__ = ["PAPER_TABLE6", "DegradationOptions", "DegradationResult", "LayerResponse", "response_stds",
           "run_degradation"]
