"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class LTBenchError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class ConfigError(LTBenchError):
    """A bad configuration key or value."""


class UnknownNameError(LTBenchError):
    """A method, dataset, model or other registered name that does not exist."""


class DataError(LTBenchError):
    """Missing, malformed or corrupt data files."""


class NonFiniteLossError(LTBenchError):
    """Training produced a NaN or infinite loss; the last good checkpoint (if any) is kept."""


def user_message(err: BaseException) -> str:
    """The message to show for ``err``, in one piece. An error that a DataLoader worker raised comes
    back with the worker's traceback in front of its message (torch's ``ExceptionWrapper``): only
    the message is the user's business."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    return text
