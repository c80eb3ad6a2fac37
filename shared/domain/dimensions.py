"""The dimension rule: what size a scene is generated at on a tier.

A tier is a bounding box. A scene has an aspect ratio, the same at every tier (otherwise an
upscale would change the composition). Its generation size is the largest size of that aspect
ratio that fits inside the box, with both sides rounded down to a multiple of 8 (latent
diffusion models work on 8-pixel blocks).
"""

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import gcd

from shared.errors import InvalidInput

SIZE_STEP = 8
# Aspect terms are stored as SMALLINT; 239:100 and 1001:1000-style ratios fit comfortably.
MAX_ASPECT_TERM = 10_000
ASPECT_TERM = re.compile(r"\d{1,9}(\.\d{1,9})?")
SMALL_ASPECT_TERM = 32  # up to here "W:H" reads well (16:9, 21:9 as 7:3); above it a decimal does


@dataclass(frozen=True, order=True)
class AspectRatio:
    """An aspect ratio in lowest terms, e.g. 16:9."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidInput(f"aspect ratio {self.width}:{self.height} must have two positive terms")
        if gcd(self.width, self.height) != 1:
            raise InvalidInput(f"aspect ratio {self.width}:{self.height} is not in lowest terms")

    def __str__(self) -> str:
        return f"{self.width}:{self.height}"

    @property
    def label(self) -> str:
        """The ratio as people write it, and as parse_aspect reads it back: small terms as they are
        ("16:9", "4:3"), wide terms as an exact decimal of the short side ("2.39:1", not 239:100)."""
        long, short = max(self.width, self.height), min(self.width, self.height)
        if long <= SMALL_ASPECT_TERM or long * 1000 % short:
            return str(self)
        decimal = f"{Decimal(long * 1000 // short) / 1000}"
        return f"{decimal}:1" if self.width > self.height else f"1:{decimal}"


def parse_aspect(text: str) -> AspectRatio:
    """Parse "16:9", "9:16", "2.39:1" or "1920x1080" into an aspect ratio in lowest terms."""
    cleaned = text.strip().lower().replace("x", ":").replace("/", ":")
    parts = [part.strip() for part in cleaned.split(":")]
    if len(parts) == 2 and any(part.startswith("-") for part in parts):
        raise InvalidInput(f"aspect ratio {text!r} must have two positive terms")
    # Plain decimals only: an exponent ("1e999999") would expand into a huge integer first.
    if len(parts) != 2 or not all(ASPECT_TERM.fullmatch(part) for part in parts):
        raise InvalidInput(f"aspect ratio {text!r} is not of the form W:H (for example 16:9 or 2.39:1)")
    terms = [Fraction(Decimal(part)) for part in parts]
    if any(term <= 0 for term in terms):
        raise InvalidInput(f"aspect ratio {text!r} must have two positive terms")
    ratio = terms[0] / terms[1]
    if ratio.numerator > MAX_ASPECT_TERM or ratio.denominator > MAX_ASPECT_TERM:
        raise InvalidInput(
            f"aspect ratio {text!r} is too fine-grained: terms up to {MAX_ASPECT_TERM} are supported"
        )
    return AspectRatio(ratio.numerator, ratio.denominator)


def generation_size(aspect: AspectRatio, box_width: int, box_height: int) -> tuple[int, int]:
    """Largest (width, height) of `aspect` inside the box, both sides multiples of 8.

    16:9 gives 512x288 in a 512x512 box, 768x432 in 768x768 and 1920x1080 in 1920x1080.
    Each side is within one 8-pixel step of the exact-aspect rectangle that touches the box.
    """
    # Scale the ratio up until one side touches the box; exact arithmetic so that 16:9 in
    # 1920x1080 lands on 1920x1080 and not on 1912x1080 through a rounding error.
    scale = min(Fraction(box_width, aspect.width), Fraction(box_height, aspect.height))
    width = int(aspect.width * scale) // SIZE_STEP * SIZE_STEP
    height = int(aspect.height * scale) // SIZE_STEP * SIZE_STEP
    if width == 0 or height == 0:
        raise InvalidInput(
            f"aspect ratio {aspect.label} is too extreme for a {box_width}x{box_height} tier: "
            f"its short side would be under {SIZE_STEP} pixels"
        )
    return width, height
