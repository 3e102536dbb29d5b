"""Frame-folder naming: file-name templates of videos stored as image frames (mmaction2's "rawframes", SSv1), and
counting the frames of a folder listing. Pure string logic (no I/O); ``uniformer.data.video`` reads the frames."""
from __future__ import annotations

import re
import string
from typing import Iterable, List, Optional, Tuple

__all__ = ["DEFAULT_FRAME_TEMPLATE", "DEFAULT_FRAME_START", "check_frame_template", "frame_name", "count_listed_frames"]

DEFAULT_FRAME_TEMPLATE = "img_{:05d}.jpg"  # mmaction2's rawframes default (Something-Something V1: "{:05d}.jpg")
DEFAULT_FRAME_START = 1  # the index of a video's first frame file, as in mmaction2

_INT_SPEC = re.compile(r"0?\d*d?")  # "", "d", "05d", "5d": the integer formats a frame number can take


def check_frame_template(template: str, start: int = DEFAULT_FRAME_START) -> None:
    """Raise ``ValueError`` unless ``template`` is a file name with exactly one integer field (``str.format`` syntax,
    e.g. ``img_{:05d}.jpg`` or ``{:05d}.jpg``) and ``start`` is a non-negative integer."""
    hint = "a file name with one integer field such as img_{:05d}.jpg or {:05d}.jpg"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"frame template must be {hint}, got {template!r} ({e})") from None
    if len(fields) != 1 or fields[0][0] not in ("", "0") or fields[0][2] or not _INT_SPEC.fullmatch(fields[0][1] or ""):
        printf = " (Python format syntax: {:05d}, not %05d)" if "%" in template and not fields else ""
        raise ValueError(f"frame template must be {hint}, got {template!r}{printf}")
    if "/" in template or "\\" in template:
        raise ValueError(f"frame template must be a file name inside the frame folder (no '/'), got {template!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"the first frame index must be a non-negative integer, got {start!r}")


def frame_name(template: str, index: int) -> str:
    """The file name of frame number ``index`` (the file's own number, i.e. already offset by the start index)."""
    return template.format(index)


def _pattern(template: str) -> re.Pattern:
    parsed = list(string.Formatter().parse(template))  # literal text comes back with {{ }} unescaped
    field = next(k for k, part in enumerate(parsed) if part[1] is not None)
    prefix = "".join(part[0] for part in parsed[:field + 1])
    suffix = "".join(part[0] for part in parsed[field + 1:])
    return re.compile(re.escape(prefix) + r" *(\d+)" + re.escape(suffix))


def count_listed_frames(names: Iterable[str], template: str, start: int) -> Tuple[int, Optional[int]]:
    """Given the file names of a folder: the number of frames ``template.format(start)``, ``start + 1``, … present
    without a gap, and the first frame number present after that run (``None`` when there is none, i.e. no gap).
    Names are matched exactly (``img_1.jpg`` is not frame 1 of ``img_{:05d}.jpg``)."""
    pattern, numbers = _pattern(template), set()
    for name in names:
        m = pattern.fullmatch(name)
        if m and template.format(int(m.group(1))) == name:
            numbers.add(int(m.group(1)))
    count = 0
    while start + count in numbers:
        count += 1
    later: List[int] = [n for n in numbers if n > start + count]
    return count, (min(later) if later else None)
