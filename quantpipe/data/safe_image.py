"""Opening untrusted image files with PIL: only the formats asked for, no decompression bombs.

`Image.open` recognises some forty formats by their content, whatever the file is called;
one of them, EPS, is rendered by running Ghostscript, an interpreter with a history of
code-execution bugs. Data sets here are opened as the formats their loaders name, so a
`cat.png` that is really EPS fails to decode instead of reaching an interpreter.

An image header can declare any size: a 100 kB PNG of 100,000×100,000 pixels would decode
to 30 GB. An image over `MAX_IMAGE_PIXELS` is refused from its header, before any pixel is
decoded. PIL's own DecompressionBombWarning (over 89 M pixels) and DecompressionBombError
(over 179 M) become the same refusal, so the CLI prints one line, not a warning and then a
traceback.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from quantpipe.errors import DataError

# 67 M pixels (8192×8192, 200 MB as RGB): far above any data set image here (Cityscapes'
# frames are 2 M), far below what would exhaust memory.
MAX_IMAGE_PIXELS = 2**26
# What PIL raises, beside UnidentifiedImageError, for a file that is not wholly an image.
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, struct.error)


@contextmanager
def open_image(
    source: IO[bytes] | Path, name: str, formats: Sequence[str]
) -> Iterator[Image.Image]:
    """`Image.open(source)` for the given PIL formats (e.g. "PNG"), refusing images over
    MAX_IMAGE_PIXELS; a file that cannot be decoded, there or in the `with` body, is a
    DataError naming `name`."""
    try:
        # catch_warnings swaps process-wide state: at worst a thread racing it keeps this
        # filter, which only turns PIL's bomb warning into the error it stands for.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=_registered(formats)) as im:
                _check_pixels(im, name)
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"image {name} is over MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS:,} pixels): refused "
            f"as a decompression bomb ({e})"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"cannot decode image {name}: it is not a {'/'.join(formats)} file (whatever "
            "its name says); replace or remove it"
        ) from None
    except _DECODE_ERRORS as e:
        raise DataError(
            f"cannot decode image {name} as {'/'.join(formats)}: {e}; replace or remove it"
        ) from None


def _check_pixels(im: Image.Image, name: str) -> None:
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"image {name} is {width}×{height} = {width * height:,} pixels, over "
            f"MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS:,}): refused before decoding (a "
            "decompression bomb, or an image to shrink first)"
        )


def _registered(formats: Sequence[str]) -> list[str]:
    """The formats this PIL build can open (WebP needs libwebp): `Image.open` raises
    KeyError on a format it has no plugin for."""
    Image.init()
    return [f for f in formats if f in Image.OPEN]
