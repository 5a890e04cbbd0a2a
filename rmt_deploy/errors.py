"""Errors that mean "the input is wrong", as opposed to a bug in rmt-deploy.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re


class RmtDeployError(Exception):
    """Base class for every error caused by the user's input (model, data, files, options)."""


class UnknownModelError(RmtDeployError):
    """The model name is neither a CIFAR ResNet, a timm model nor `package.module:callable`."""


class CheckpointError(RmtDeployError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class NonFiniteWeightsError(RmtDeployError):
    """A weight tensor holds NaN or Inf values."""


class DataError(RmtDeployError):
    """A data folder is missing, empty, or not laid out as an image dataset."""


class OutputError(RmtDeployError):
    """An output location cannot be created or written."""


class AssetsError(RmtDeployError):
    """The shared assets folder (real checkpoints and data) cannot be found."""


def one_line(message: str) -> str:
    """An error message as one line. An error raised in a DataLoader worker comes back with
    torch's wrapping ("Caught DataError in DataLoader worker process 0. Original Traceback
    …", the worker's whole traceback): its last line is the original message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return message.strip()
    if lines[0].startswith("Caught ") and "Original Traceback" in message:
        last = lines[-1]
        # "rmt_deploy.errors.DataError: …" → "…"
        return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception)[^:\s]*: ", "", last, count=1)
    return " ".join(lines)


class BudgetError(RmtDeployError):
    """A budget the data or the model's outputs cannot support, or an unknown metric."""
