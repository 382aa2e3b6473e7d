"""A network's scale: one meaning of `width_div` for every family and every stage.

A model's widths are those of the network it is made from, each divided by `width_div` and
rounded down (at least 1): a teacher is made from its family's full network (VGG16-BN's or
ResNet-18's widths), a student from its teacher. The widths themselves are in the model's
config, which every checkpoint stores, so nothing downstream divides again.
"""

from __future__ import annotations

from collections.abc import Iterable

WIDTH_DIVS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def check_width_div(width_div: int, name: str = "width_div") -> int:
    """`width_div` if it is one of WIDTH_DIVS, else a ValueError naming `name`."""
    if width_div not in WIDTH_DIVS:
        raise ValueError(f"{name} must be one of {WIDTH_DIVS}, got {width_div!r}")
    return width_div


def scale_widths(widths: Iterable[int], width_div: int) -> tuple[int, ...]:
    """Every width // `width_div`, at least 1."""
    check_width_div(width_div)
    return tuple(max(1, w // width_div) for w in widths)
