"""Exceptions the CLI turns into one-line messages; anything else is a bug."""

from pathlib import Path


class Latent2Mp4Error(Exception):
    """Base of every error a user can cause; its message is one line and says what to do."""

    exit_code = 1


class UsageError(Latent2Mp4Error):
    """Bad arguments or options (exit code 2)."""

    exit_code = 2


class InputError(Latent2Mp4Error):
    """A latent file that cannot be read or does not fit the model."""


class WeightsError(Latent2Mp4Error):
    """VAE weights or config that cannot be found, read or loaded strictly."""


class OutputError(Latent2Mp4Error):
    """An output that exists, cannot be written, or an ffmpeg failure."""


class DecodeError(Latent2Mp4Error):
    """Decoding produced frames that cannot be shown (NaN/Inf, e.g. an fp16 overflow)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while writing `path`; its temporary file has already been removed."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
