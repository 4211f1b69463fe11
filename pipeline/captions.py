"""Caption files in the formats text-to-video datasets ship: LAFF/W2VV text, MSR-VTT JSON, CSV, JSONL.

Every reader returns the same :class:`Caption` rows, so the rest of the pipeline never
cares where captions came from. Caption ids follow LAFF: ``<video_id>#<k>``; the video id
is everything before the first ``#`` (LAFF's ``video0#enc#0`` variant reads as ``video0``).
Formats without caption ids get ``<video_id>#<k>`` with ``k`` counting that video's
captions in file order.

Bad input is a :class:`CaptionFormatError` naming the file, the line (or JSON path) and
what was expected, never a bare ``UnicodeDecodeError``/``KeyError`` from deep inside.

Files are read a block at a time (:func:`iter_captions`): a million captions must not be a
million objects at once for ``extract-text``; :func:`read_captions` is the same read, kept.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

FORMATS = ("laff", "msrvtt", "csv", "jsonl")
_EXTENSIONS = {".txt": "laff", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "msrvtt"}
# LAFF strips these from caption ids whose video part is a file name (``video7.mp4#0``).
_ID_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".gif", ".jpg")
_TEXT_COLUMNS = ("caption", "sentence")  # CSV/JSONL text column; "sentence" as in CLIP4Clip's csvs


@dataclass(frozen=True)
class Caption:
    caption_id: str
    video_id: str
    text: str


class CaptionFormatError(VidfuseError):
    """A caption (or annotation) file is unreadable or not in the expected format."""


def captionable(video_id: str) -> bool:
    """Whether caption files can name ``video_id``: '#' and whitespace separate video id,
    caption number and text in LAFF caption lines (``video7#3 a man sings``)."""
    return "#" not in video_id and not any(map(str.isspace, video_id))


def video_id_of(caption_id: str) -> str:
    """The video a LAFF caption id belongs to: ``video7#3`` and ``video7#enc#3`` -> ``video7``."""
    vid = caption_id.split("#", 1)[0]
    for suffix in _ID_SUFFIXES:
        if vid.endswith(suffix):
            return vid[: -len(suffix)]
    return vid


def _read_error(path: Path, exc: OSError, error: type[VidfuseError]) -> VidfuseError:
    if isinstance(exc, FileNotFoundError):
        return error(f"{path}: file not found")
    if isinstance(exc, IsADirectoryError):
        return error(f"{path}: is a directory, expected a file")
    return error(f"{path}: cannot read ({exc.strerror})")


def _check_encoding(path: Path, blocks: Iterable[bytes], error: type[VidfuseError]) -> None:
    """Refuse what :func:`read_text_file` refuses, over ``blocks`` that each end at a newline.

    In this order, wherever they are in the file: a UTF-16/32 byte order mark, a NUL byte, bytes
    that are not UTF-8 (the first of each).
    """
    newlines, bad = 0, None
    for i, block in enumerate(blocks):
        if i == 0:
            for name, bom in (("UTF-32", codecs.BOM_UTF32_LE), ("UTF-32", codecs.BOM_UTF32_BE),
                              ("UTF-16", codecs.BOM_UTF16_LE), ("UTF-16", codecs.BOM_UTF16_BE)):
                if block.startswith(bom):
                    raise error(f"{path} line 1: not valid UTF-8: starts with a {name} byte order mark "
                                f"({bom.hex(' ')}); re-encode the file as UTF-8")
        nul = block.find(b"\0")  # no UTF-8 text holds one (UTF-16/32 were refused above)
        if nul >= 0:
            line = newlines + block.count(b"\n", 0, nul) + 1
            raise error(f"{path} line {line}: NUL byte: a binary file, not text")
        if bad is None:
            try:
                block.decode("utf-8")  # a UTF-8 byte order mark decodes too: its bytes count in the column
            except UnicodeDecodeError as exc:
                line = newlines + block.count(b"\n", 0, exc.start) + 1
                column = exc.start - (block.rfind(b"\n", 0, exc.start) + 1) + 1
                bad = error(f"{path} line {line}: not valid UTF-8 (byte 0x{block[exc.start]:02x} at column {column}); "
                            "re-encode the file as UTF-8")
        newlines += block.count(b"\n")
    if bad is not None:
        raise bad


def read_text_file(path: str | os.PathLike, error: type[VidfuseError] | None = None) -> str:
    """Whole file as UTF-8 text (a UTF-8 BOM is dropped); anything else is an ``error`` naming file and line.

    ``error`` defaults to :class:`CaptionFormatError`. A UTF-16/32 file (Windows "Unicode" text,
    told by its byte order mark) is refused with that said, rather than guessed at: bytes
    that merely start like a BOM would otherwise decode to plausible-looking nonsense.
    A NUL byte means a binary file.
    """
    error = error or CaptionFormatError
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _read_error(path, exc, error) from None
    _check_encoding(path, [data], error)
    return data.decode("utf-8-sig")


BLOCK_BYTES = 1 << 20  # what a streamed text file is read in: memory is one block, not the file


def _raw_blocks(path: Path, error: type[VidfuseError]) -> Iterator[bytes]:
    """The file's bytes in blocks of about :data:`BLOCK_BYTES` that end at a newline (or the end):
    no line, CRLF pair or UTF-8 character is ever cut between two blocks."""
    try:
        with open(path, "rb") as f:
            pending: list[bytes] = []  # a line longer than a block is joined once, not block by block
            while chunk := f.read(BLOCK_BYTES):
                cut = chunk.rfind(b"\n") + 1
                if cut:
                    yield b"".join([*pending, chunk[:cut]])
                    pending = []
                    chunk = chunk[cut:]
                if chunk:
                    pending.append(chunk)
            if pending:
                yield b"".join(pending)
    except OSError as exc:
        raise _read_error(path, exc, error) from None


def text_blocks(path: str | os.PathLike, error: type[VidfuseError] | None = None) -> Iterator[str]:
    """The text of :func:`read_text_file`, in blocks that end at line ends: the same checks (made
    over the whole file before the first block), the same text once joined, one block in memory."""
    error = error or CaptionFormatError
    path = Path(path)
    _check_encoding(path, _raw_blocks(path, error), error)
    for i, block in enumerate(_raw_blocks(path, error)):
        yield block.decode("utf-8-sig" if i == 0 else "utf-8")


def text_lines(path: str | os.PathLike, error: type[VidfuseError] | None = None) -> Iterator[str]:
    """``read_text_file(path).splitlines()``, streamed (blocks end at newlines, so they split alike)."""
    for block in text_blocks(path, error):
        yield from block.splitlines()


def _clean(text: str) -> str:
    """One line of text: internal newlines/tabs/repeated spaces collapsed (LAFF files are line based)."""
    return " ".join(text.split())


class DuplicateCaptionId(CaptionFormatError):
    """Two captions of a file have one id; ``first`` is where the first was (None: not known yet)."""

    def __init__(self, at: str, caption_id: str, first: str | None):
        self.at, self.caption_id, self.first = at, caption_id, first
        super().__init__(f"{at}: duplicate caption id {caption_id!r} (first at {first})")


class CaptionCollector:
    """Accumulates captions (from one or several files), assigning ``<vid>#<k>`` ids, refusing duplicates.

    ``where`` (e.g. ``"line 12"``, ``"sentences[3]"``) and the file go into every error message.
    ``keep=False`` streams: :meth:`add` returns each caption and nothing is kept but the ids seen
    (:class:`~pipeline.seen_ids.SeenIds`, about their length each) and a count per video; a
    duplicate is then a :class:`DuplicateCaptionId` whose ``first`` the reader finds
    (:func:`iter_captions` reads the file again up to it).
    """

    def __init__(self, path: str | os.PathLike | None = None, keep: bool = True):
        from pipeline.seen_ids import SeenIds

        self.path = Path(path) if path is not None else None
        self.keep = keep
        self.captions: list[Caption] = []
        self.count = 0
        self.last_at = ""  # where the caption add() returned last was (the locating read needs it)
        self._first: dict[str, str] | SeenIds = {} if keep else SeenIds()  # id -> where; streamed: just the ids
        self._per_video: dict[str, int] = defaultdict(int)

    def add(self, video_id: str, text: str, where: str, caption_id: str | None = None,
            path: str | os.PathLike | None = None) -> Caption:
        if path is not None:
            self.path = Path(path)
        at = f"{self.path} {where}"
        if not video_id:
            raise CaptionFormatError(f"{at}: empty video id")
        if not captionable(video_id):
            raise CaptionFormatError(
                f"{at}: video id {video_id!r} contains '#' or whitespace, which separate "
                "video id, caption number and text in LAFF caption lines"
            )
        text = _clean(text)
        if not text:
            raise CaptionFormatError(f"{at}: empty caption text for video {video_id!r}")
        numbered = caption_id is None
        if numbered:  # the next number of this video not already taken by an explicit id
            while f"{video_id}#{self._per_video[video_id]}" in self._first:
                self._per_video[video_id] += 1
            caption_id = f"{video_id}#{self._per_video[video_id]}"
        elif video_id_of(caption_id) != video_id or any(map(str.isspace, caption_id)):
            raise CaptionFormatError(f"{at}: caption id {caption_id!r} is not of the form '{video_id}#<k>'")
        self._per_video[video_id] += 1
        self.last_at = f"{at}, numbered automatically" if numbered else at
        if isinstance(self._first, dict):
            if caption_id in self._first:
                raise DuplicateCaptionId(at, caption_id, self._first[caption_id])
            self._first[caption_id] = self.last_at
        elif not self._first.add(caption_id):
            raise DuplicateCaptionId(at, caption_id, None)
        caption = Caption(caption_id, video_id, text)
        self.count += 1
        if self.keep:
            self.captions.append(caption)
        return caption

    def result(self, expected: str) -> list[Caption]:
        if not self.count:
            raise CaptionFormatError(f"{self.path}: no captions found (empty file?); expected {expected}")
        return self.captions


def _read_laff(path: Path, out: CaptionCollector) -> Iterator[Caption]:
    expected = "'<video_id>#<k> <caption text>' per line, e.g. 'video7768#14 a man is singing'"
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        cap_id = parts[0]
        if "#" not in cap_id or cap_id.startswith("#") or cap_id.endswith("#"):
            raise CaptionFormatError(f"{path} line {lineno}: caption id {cap_id!r} is not '<video_id>#<k>'; expected {expected}")
        if len(parts) < 2:
            raise CaptionFormatError(f"{path} line {lineno}: caption {cap_id!r} has no text; expected {expected}")
        yield out.add(video_id_of(cap_id), parts[1], f"line {lineno}", caption_id=cap_id)
    out.result(expected)


def _json_error(path: Path, exc: json.JSONDecodeError, lineno: int | None = None) -> CaptionFormatError:
    line = lineno if lineno is not None else exc.lineno
    return CaptionFormatError(f"{path} line {line}: invalid JSON ({exc.msg} at column {exc.colno})")


def _parse_json(path: Path, text: str, expected: str):
    if not text.strip():
        raise CaptionFormatError(f"{path}: empty file; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None


def load_json(path: str | os.PathLike, expected: str = "JSON"):
    """Parsed JSON file; bad UTF-8, an empty file or a syntax error name the file and line."""
    path = Path(path)
    return _parse_json(path, read_text_file(path), expected)


_MSRVTT_EXPECTED = 'a JSON object {"sentences": [{"video_id": ..., "caption": ...}, ...]} (MSRVTT_data.json)'


def _read_msrvtt(path: Path, out: CaptionCollector) -> Iterator[Caption]:
    """One JSON document: parsed whole (the only format that is not read a block at a time)."""
    yield from _msrvtt_items(path, load_json(path, _MSRVTT_EXPECTED), out)
    out.result(_MSRVTT_EXPECTED)


def msrvtt_captions(path: Path, data, expected: str = "MSRVTT_data.json") -> list[Caption]:
    """Captions of an already parsed MSR-VTT annotation object (``sentences[].video_id/caption``)."""
    out = CaptionCollector(path)
    for _ in _msrvtt_items(path, data, out, expected):
        pass
    return out.result(expected)


def _msrvtt_items(path: Path, data, out: CaptionCollector, expected: str = _MSRVTT_EXPECTED) -> Iterator[Caption]:
    if not isinstance(data, dict) or "sentences" not in data:
        raise CaptionFormatError(f"{path}: top level has no 'sentences' key; expected {expected}")
    sentences = data["sentences"]
    if not isinstance(sentences, list):
        raise CaptionFormatError(f"{path}: 'sentences' is {type(sentences).__name__}, expected a list")
    for i, item in enumerate(sentences):
        where = f"sentences[{i}]"
        if not isinstance(item, dict):
            raise CaptionFormatError(f"{path} {where}: expected an object with 'video_id' and 'caption'")
        for key in ("video_id", "caption"):
            if key not in item:
                raise CaptionFormatError(f"{path} {where}: missing key {key!r} (expected 'video_id' and 'caption')")
            if not isinstance(item[key], str):
                raise CaptionFormatError(f"{path} {where}.{key}: expected a string, got {type(item[key]).__name__}")
        yield out.add(item["video_id"].strip(), item["caption"], where)


def _csv_lines(path: Path, expected: str) -> Iterator[str]:
    """The lines ``csv`` reads (ends kept, as ``io.StringIO(text, newline="")`` splits them); an
    empty or blank file is refused first."""
    lines = (line for block in text_blocks(path) for line in io.StringIO(block, newline=""))
    blank = []
    for line in lines:
        if line.strip():
            break
        blank.append(line)
    else:
        raise CaptionFormatError(f"{path}: empty file; expected {expected}")
    yield from blank
    yield line
    yield from lines


def _read_csv(path: Path, out: CaptionCollector) -> Iterator[Caption]:
    expected = "a header row with columns 'video_id' and 'caption' (optionally 'caption_id')"
    reader = csv.DictReader(_csv_lines(path, expected))
    header = reader.fieldnames or []
    fields = [h.strip() for h in header]
    reader.fieldnames = fields
    text_col = next((c for c in _TEXT_COLUMNS if c in fields), None)
    missing = [c for c in ("video_id",) if c not in fields] + ([] if text_col else ["caption"])
    if missing:
        raise CaptionFormatError(f"{path} line 1: missing column(s) {missing} in header {fields}; expected {expected}")
    id_col = "caption_id" if "caption_id" in fields else None
    try:
        for row in reader:
            where = f"line {reader.line_num}"
            if None not in row and not any((value or "").strip() for value in row.values()):
                continue  # a whitespace-only line (csv skips only truly empty ones)
            if None in row:  # more fields than the header names
                raise CaptionFormatError(f"{path} {where}: {len(fields) + len(row[None])} fields, header has {len(fields)}")
            if row[text_col] is None:
                raise CaptionFormatError(f"{path} {where}: fewer fields than the header {fields}")
            cap_id = None
            if id_col:
                cap_id = (row[id_col] or "").strip() or None
            yield out.add((row["video_id"] or "").strip(), row[text_col], where, caption_id=cap_id)
    except csv.Error as exc:
        raise CaptionFormatError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None
    out.result(expected)


def _read_jsonl(path: Path, out: CaptionCollector) -> Iterator[Caption]:
    expected = 'one JSON object per line: {"video_id": ..., "caption": ...} (optionally "caption_id")'
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc, lineno) from None
        where = f"line {lineno}"
        if not isinstance(item, dict):
            raise CaptionFormatError(f"{path} {where}: expected a JSON object; {expected}")
        text_key = next((k for k in _TEXT_COLUMNS if k in item), None)
        for key in ("video_id", text_key or "caption"):
            if key not in item:
                raise CaptionFormatError(f"{path} {where}: missing key {key!r}; expected {expected}")
            if not isinstance(item[key], str):
                raise CaptionFormatError(f"{path} {where}: {key!r} must be a string, got {type(item[key]).__name__}")
        cap_id = item.get("caption_id")
        if cap_id is not None and not isinstance(cap_id, str):
            raise CaptionFormatError(f"{path} {where}: 'caption_id' must be a string")
        yield out.add(item["video_id"].strip(), item[text_key], where, caption_id=cap_id)
    out.result(expected)


_READERS = {"laff": _read_laff, "msrvtt": _read_msrvtt, "csv": _read_csv, "jsonl": _read_jsonl}


def detect_format(path: str | os.PathLike, text: str | None = None) -> str:
    """Format of a caption file: from its extension, checked against (or else guessed from) its content."""
    path = Path(path)
    lines = (ln.strip() for ln in (text.splitlines() if text is not None else text_lines(path)))
    nonblank = (ln for ln in lines if ln)
    first = next(nonblank, "")
    by_ext = _EXTENSIONS.get(path.suffix.lower())
    if first.startswith("{") or first.startswith("["):
        # one complete object on the first line and more lines after it -> JSON lines
        if next(nonblank, None) is not None:
            try:
                if isinstance(json.loads(first), dict):
                    return "jsonl"
            except json.JSONDecodeError:
                pass
        return "jsonl" if by_ext == "jsonl" else "msrvtt"
    if by_ext in ("laff", "csv"):
        return by_ext
    if by_ext in ("msrvtt", "jsonl"):
        return by_ext  # content is not JSON: the reader reports where
    header = next(csv.reader([first]), [])
    if "video_id" in [h.strip() for h in header]:
        return "csv"
    return "laff"


def iter_captions(path: str | os.PathLike, fmt: str | None = None) -> Iterator[Caption]:
    """The captions of :func:`read_captions`, one at a time, with the same checks and errors.

    Memory is one block of the file and the ids seen so far (about their length each), not the
    captions: ``extract-text`` reads a million in the memory of ten thousand. An MSR-VTT JSON
    file is one document, parsed whole. A file with an error raises it when the reading gets
    there: read it through once before acting on any caption.
    """
    path = Path(path)
    if fmt is not None and fmt not in _READERS:
        raise CaptionFormatError(f"unknown caption format {fmt!r}; known: {list(FORMATS)}")
    fmt = fmt or detect_format(path)
    try:
        yield from _READERS[fmt](path, CaptionCollector(path, keep=False))
    except DuplicateCaptionId as exc:
        if exc.first is not None:
            raise
        locate = CaptionCollector(path, keep=False)  # the same ids again, up to the first of the two
        first = next(locate.last_at for c in _READERS[fmt](path, locate) if c.caption_id == exc.caption_id)
        raise DuplicateCaptionId(exc.at, exc.caption_id, first) from None


def read_captions(path: str | os.PathLike, fmt: str | None = None) -> list[Caption]:
    """All captions of a file, in file order. ``fmt``: one of :data:`FORMATS`, or None to detect."""
    captions = list(iter_captions(path, fmt))
    logger.debug("read %d captions from %s", len(captions), path)
    return captions


def captions_by_video(captions: Iterable[Caption]) -> dict[str, list[Caption]]:
    """Captions grouped by video id; videos in order of first appearance, captions in input order."""
    grouped: dict[str, list[Caption]] = {}
    for cap in captions:
        grouped.setdefault(cap.video_id, []).append(cap)
    return grouped


def write_captions(captions: Sequence[Caption], path: str | os.PathLike) -> None:
    """Write captions in LAFF text format (``<caption_id> <text>`` per line), readable by :func:`read_captions`."""
    path = Path(path)
    seen: set[str] = set()
    lines = []
    for cap in captions:
        if not cap.caption_id or any(ch.isspace() for ch in cap.caption_id) or "#" not in cap.caption_id:
            raise CaptionFormatError(f"{path}: caption id {cap.caption_id!r} cannot be written as a LAFF id '<video_id>#<k>'")
        if video_id_of(cap.caption_id) != cap.video_id:
            raise CaptionFormatError(
                f"{path}: caption id {cap.caption_id!r} does not start with its video id {cap.video_id!r}#"
            )
        if cap.caption_id in seen:
            raise CaptionFormatError(f"{path}: duplicate caption id {cap.caption_id!r}")
        seen.add(cap.caption_id)
        text = _clean(cap.text)
        if not text:
            raise CaptionFormatError(f"{path}: caption {cap.caption_id!r} has empty text")
        lines.append(f"{cap.caption_id} {text}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
