"""Checks and message pieces that every input loader shares (stage: input).

A loader first checks the path it was given (:func:`check_file`), then words its errors with
the same pieces: the error's one-line text, the model's first layer, a channel count. Nothing
here reads a file's contents.
"""

from __future__ import annotations

from pathlib import Path

from featuremaps._errors import InputError, OptionError

__all__ = [
    "channel_count",
    "check_file",
    "existing_path",
    "layer_phrase",
    "one_line",
    "unreadable",
]


def existing_path(path: str | Path) -> Path:
    """``path`` as a :class:`Path`, or an :class:`InputError` saying it does not exist."""
    where = Path(path)
    if not where.exists():
        raise InputError(
            f"input '{where}' does not exist; check the path (relative paths start from "
            f"'{Path.cwd()}')"
        )
    return where


def check_file(path: str | Path, channels: int | None) -> Path:
    """The path of one readable, non-empty input file, after checking ``channels`` is valid."""
    if channels is not None and (
        not isinstance(channels, int) or isinstance(channels, bool) or channels < 1
    ):
        raise OptionError(
            f"channels {channels!r} is not valid; expected a positive integer (what the model's "
            f"first layer takes) or None to keep what the file has"
        )
    where = existing_path(path)
    if where.is_dir():
        raise InputError(
            f"input '{where}' is a directory, expected one image or .npy file; pass a file "
            f"inside it"
        )
    if where.stat().st_size == 0:
        raise InputError(
            f"input '{where}' is empty (0 bytes), expected an image or .npy file; check that it "
            f"was written completely"
        )
    return where


def one_line(error: BaseException) -> str:
    """The error's message folded onto one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def unreadable(path: Path, error: OSError) -> InputError:
    """The error for a file the system refuses to open."""
    return InputError(
        f"input '{path}' cannot be read ({error.strerror or one_line(error)}); check that you "
        f"may read it"
    )


def layer_phrase(layer_name: str | None) -> str:
    """The model's first layer, named when its name is known."""
    return f"the model's first layer '{layer_name}'" if layer_name else "the model's first layer"


def channel_count(count: int) -> str:
    """``count`` channels in words: "1 channel", "3 channels"."""
    return f"{count} channel{'s' if count != 1 else ''}"
