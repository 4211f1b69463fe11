"""Procedural text-video dataset: coloured shapes that move, speed up, appear and vanish.

Why: every stage (extraction, training, indexing, the demo) needs videos *with captions*
and no download is possible here. Plain random clips would make retrieval trivial or
meaningless; these scenes are built so that it is neither:

- captions name colour, shape AND motion/order ("a red disc slides left, then a blue
  square appears"), in varied wording (synonyms, clause orders, "after"/"before"/"while");
- videos come in *contrast pairs*: video ``2k+1`` is video ``2k`` played backwards
  (same shapes, colours and positions, so the same set of frames), hence opposite
  directions, swapped speed changes, appear<->vanish and reversed event order. Only a
  model that sees temporal order can tell the two apart; appearance alone cannot;
- a pair stays together in one split where the split sizes allow it, so the test split
  holds these hard negatives too.

Everything is derived from ``seed`` through per-video random streams, so the same seed
gives identical scenes, captions, splits and (same libraries) identical mp4 bytes.

Layout written under ``out_dir`` (see :func:`generate_dataset`)::

    videos/video<i>.mp4   captions.txt (LAFF/W2VV)   MSRVTT_data.json
    train.txt val.txt test.txt   synth.json (parameters + scene of every video)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np
from tqdm.auto import tqdm

from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
SPLITS = ("train", "val", "test")
# MSRVTT_data.json names the validation split "validate" (as the released file does).
MSRVTT_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}
DEFAULT_FPS_CHOICES = (12, 15, 24, 25, 30)

# ---------------------------------------------------------------- vocabulary
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 235),
    "yellow": (245, 220, 30),
    "purple": (150, 45, 200),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (105, 105, 105),
    "white": (255, 255, 255),
}
_LOW_CONTRAST = {"white": {"white", "yellow"}}  # background -> colours not drawn on it

# shape -> words captions may use for it (first = canonical name)
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
}
DIRECTIONS = ("left", "right", "up", "down")
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
PROFILES = ("constant", "speed_up", "slow_down")
_REVERSED_PROFILE = {"constant": "constant", "speed_up": "slow_down", "slow_down": "speed_up"}

# verb phrases in base form; third person and gerund are derived by _conjugate
_DIRECTION_VERBS: dict[str, tuple[str, ...]] = {
    "left": ("move left", "slide left", "slide to the left", "travel leftward", "go left",
             "head to the left", "move from right to left", "drift left"),
    "right": ("move right", "slide right", "slide to the right", "travel rightward", "go right",
              "head to the right", "move from left to right", "drift right"),
    "up": ("move up", "rise", "go upward", "float up", "climb", "move upward",
           "travel up", "move from bottom to top"),
    "down": ("move down", "fall", "sink", "drop", "go downward", "slide down",
             "travel down", "move from top to bottom"),
}
_SPEED_VERBS: dict[str, tuple[str, ...]] = {
    "speed_up": ("speed up", "accelerate", "get faster", "pick up speed", "go faster and faster"),
    "slow_down": ("slow down", "decelerate", "get slower", "lose speed", "go slower and slower"),
}
_APPEAR_VERBS = ("appear", "show up", "pop up", "come into view", "emerge")
_VANISH_VERBS = ("disappear", "vanish", "blink out", "disappear from view")

# Words a caption uses for motion or temporal events: every caption contains one of them.
_EVENT_PHRASES = (*(p for ps in _DIRECTION_VERBS.values() for p in ps),
                  *(p for ps in _SPEED_VERBS.values() for p in ps), *_APPEAR_VERBS, *_VANISH_VERBS)

_GERUND_IRREGULAR = {"drop": "dropping", "get": "getting", "pop": "popping"}


def _conjugate(base: str) -> tuple[str, str, str]:
    """(base, third person singular, gerund) of a verb phrase whose first word is the verb."""
    verb, _, rest = base.partition(" ")
    third = verb + ("es" if verb.endswith(("o", "sh", "ch", "s", "x")) else "s")
    if verb in _GERUND_IRREGULAR:
        gerund = _GERUND_IRREGULAR[verb]
    elif verb.endswith("e") and not verb.endswith("ee"):
        gerund = verb[:-1] + "ing"
    else:
        gerund = verb + "ing"
    tail = f" {rest}" if rest else ""
    return base, third + tail, gerund + tail


MOTION_WORDS: frozenset[str] = frozenset(
    form.split()[0] for phrase in _EVENT_PHRASES for form in _conjugate(phrase)
) | frozenset(DIRECTIONS)


# ---------------------------------------------------------------- scene model
@dataclass(frozen=True)
class Move:
    """One straight motion of a shape between normalised times ``t0`` < ``t1`` (0..1 of the clip).

    ``distance`` is a fraction of the frame extent along the motion axis; ``profile``
    says how the position follows time (``speed_up``: s = tau^2, ``slow_down``: 1-(1-tau)^2).
    """

    t0: float
    t1: float
    direction: str
    distance: float
    profile: str = "constant"


@dataclass(frozen=True)
class Shape:
    """A drawn object. Coordinates are normalised (x / width, y / height); ``size`` is the
    radius as a fraction of min(width, height). Visible for appear_at <= t <= vanish_at."""

    label: str  # "A" or "B": which object of the scene (captions never show it)
    kind: str
    colour: str
    size: float
    start: tuple[float, float]
    appear_at: float = 0.0
    vanish_at: float = 1.0
    moves: tuple[Move, ...] = ()

    def position(self, t: float) -> tuple[float, float]:
        x, y = self.start
        for m in self.moves:
            if t <= m.t0:
                continue
            tau = min(1.0, (t - m.t0) / (m.t1 - m.t0))
            s = _profile(m.profile, tau)
            ux, uy = _UNIT[m.direction]
            x += ux * m.distance * s
            y += uy * m.distance * s
        return x, y

    @property
    def end(self) -> tuple[float, float]:
        return self.position(1.0)


@dataclass(frozen=True)
class Scene:
    """What one video shows: a background and one or two shapes. ``kind`` names the recipe."""

    kind: str
    background: str
    shapes: tuple[Shape, ...]

    def events(self) -> list[dict[str, Any]]:
        """Motion / appear / vanish events in temporal order (what captions describe)."""
        out: list[dict[str, Any]] = []
        for sh in self.shapes:
            if sh.appear_at > 0.0:
                out.append({"type": "appear", "shape": sh.label, "t0": sh.appear_at, "t1": sh.appear_at})
            for m in sh.moves:
                out.append({"type": "move", "shape": sh.label, "t0": m.t0, "t1": m.t1,
                            "direction": m.direction, "profile": m.profile})
            if sh.vanish_at < 1.0:
                out.append({"type": "vanish", "shape": sh.label, "t0": sh.vanish_at, "t1": sh.vanish_at})
        out.sort(key=lambda e: (e["t0"], e["shape"]))
        return out

    def shape(self, label: str) -> Shape:
        return next(s for s in self.shapes if s.label == label)


def _profile(profile: str, tau: float) -> float:
    if profile == "speed_up":
        return tau * tau
    if profile == "slow_down":
        return 1.0 - (1.0 - tau) ** 2
    return tau


def reverse_scene(scene: Scene) -> Scene:
    """The scene played backwards: t -> 1 - t. Directions flip, speed-ups become slow-downs,
    appearing becomes vanishing, and the order of events is reversed; positions are shared."""
    shapes = []
    for sh in scene.shapes:
        moves = tuple(
            Move(t0=_r(1.0 - m.t1), t1=_r(1.0 - m.t0), direction=_OPPOSITE[m.direction],
                 distance=m.distance, profile=_REVERSED_PROFILE[m.profile])
            for m in reversed(sh.moves)
        )
        shapes.append(replace(sh, start=tuple(_r(v) for v in sh.end), appear_at=_r(1.0 - sh.vanish_at),
                              vanish_at=_r(1.0 - sh.appear_at), moves=moves))
    return Scene(kind=f"reversed:{scene.kind}", background=scene.background, shapes=tuple(shapes))


def _r(v: float) -> float:
    return round(float(v), 4)


# ---------------------------------------------------------------- scene sampling
SCENE_KINDS = (
    "move",              # A moves one way
    "speed",             # A moves and speeds up / slows down
    "turn",              # A moves one way, then a perpendicular way
    "move_then_appear",  # A moves, stops; then B appears
    "appear_then_move",  # B appears; then A (still so far) moves
    "move_then_vanish",  # A moves, then vanishes
    "appear_and_move",   # A appears, then moves
    "two_move",          # A and B move at the same time in different directions
)


def _margin(size: float, width: int, height: int) -> tuple[float, float]:
    """Normalised margins that keep a shape of radius ``size`` fully inside the frame."""
    r = size * min(width, height)
    return (r + 1.5) / width, (r + 1.5) / height


def _place_path(rng: np.random.Generator, moves: Sequence[Move], size: float, width: int,
                height: int) -> tuple[float, float]:
    """A start point such that the whole (piecewise straight) path stays inside the frame."""
    mx, my = _margin(size, width, height)
    xs, ys, x, y = [0.0], [0.0], 0.0, 0.0
    for m in moves:
        ux, uy = _UNIT[m.direction]
        x, y = x + ux * m.distance, y + uy * m.distance
        xs.append(x)
        ys.append(y)
    lo_x, hi_x = mx - min(xs), 1.0 - mx - max(xs)
    lo_y, hi_y = my - min(ys), 1.0 - my - max(ys)
    return _r(rng.uniform(lo_x, max(lo_x, hi_x))), _r(rng.uniform(lo_y, max(lo_y, hi_y)))


def _distance(rng: np.random.Generator, size: float, width: int, height: int, direction: str,
              frac: tuple[float, float] = (0.4, 0.6)) -> float:
    mx, my = _margin(size, width, height)
    room = 1.0 - 2 * (mx if direction in ("left", "right") else my)
    return _r(min(room, rng.uniform(*frac)))


def _clear_of(a: Shape, b: Shape, width: int, height: int, gap: float = 2.0) -> bool:
    """True when the two shapes never overlap while both are visible (checked on 41 instants)."""
    scale = min(width, height)
    limit = (a.size + b.size) * scale + gap
    for t in np.linspace(0.0, 1.0, 41):
        if not (a.appear_at <= t <= a.vanish_at and b.appear_at <= t <= b.vanish_at):
            continue
        (ax, ay), (bx, by) = a.position(t), b.position(t)
        if math.hypot((ax - bx) * width, (ay - by) * height) < limit:
            return False
    return True


def sample_scene(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> Scene:
    """Draw a random scene of ``kind`` (random kind when None) for a ``width`` x ``height`` frame."""
    kind = kind or str(rng.choice(SCENE_KINDS))
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; one of {SCENE_KINDS}")
    background = str(rng.choice(list(BACKGROUNDS)))
    colours = [c for c in COLOURS if c not in _LOW_CONTRAST.get(background, ())]
    col_a, col_b = (str(c) for c in rng.choice(colours, size=2, replace=False))
    kind_a, kind_b = str(rng.choice(list(SHAPES))), str(rng.choice(list(SHAPES)))
    size_a, size_b = _r(rng.uniform(0.09, 0.13)), _r(rng.uniform(0.09, 0.13))
    j = lambda: float(rng.uniform(-0.04, 0.04))  # noqa: E731  (timing jitter)
    d1 = str(rng.choice(DIRECTIONS))

    def mover(moves: list[Move], appear_at: float = 0.0, vanish_at: float = 1.0) -> Shape:
        start = _place_path(rng, moves, size_a, width, height)
        return Shape("A", kind_a, col_a, size_a, start, _r(appear_at), _r(vanish_at), tuple(moves))

    def move(t0: float, t1: float, direction: str, profile: str = "constant",
             frac: tuple[float, float] = (0.4, 0.6)) -> Move:
        return Move(_r(t0), _r(t1), direction, _distance(rng, size_a, width, height, direction, frac), profile)

    second: Shape | None = None
    if kind == "move":
        a = mover([move(0.05 + j(), 0.95 + j(), d1)])
    elif kind == "speed":
        a = mover([move(0.05 + j(), 0.95 + j(), d1, str(rng.choice(["speed_up", "slow_down"])), (0.5, 0.7))])
    elif kind == "turn":
        d2 = str(rng.choice(["up", "down"] if d1 in ("left", "right") else ["left", "right"]))
        mid = 0.5 + j()
        a = mover([move(0.05, mid - 0.02, d1, frac=(0.35, 0.5)), move(mid + 0.02, 0.95, d2, frac=(0.35, 0.5))])
    elif kind == "move_then_appear":
        a = mover([move(0.05 + j(), 0.45 + j(), d1)])
        second = Shape("B", kind_b, col_b, size_b, (0.5, 0.5), appear_at=_r(0.6 + j()))
    elif kind == "appear_then_move":
        a = mover([move(0.55 + j(), 0.95 + j(), d1)])
        second = Shape("B", kind_b, col_b, size_b, (0.5, 0.5), appear_at=_r(0.35 + j()))
    elif kind == "move_then_vanish":
        a = mover([move(0.05 + j(), 0.5 + j(), d1)], vanish_at=0.62 + j())
    elif kind == "appear_and_move":
        a = mover([move(0.5 + j(), 0.95 + j(), d1)], appear_at=0.38 + j())
    else:  # two_move
        d2 = str(rng.choice([d for d in DIRECTIONS if d != d1]))
        a = mover([move(0.05 + j(), 0.95 + j(), d1, frac=(0.3, 0.5))])
        mv = Move(_r(0.05 + j()), _r(0.95 + j()), d2, _distance(rng, size_b, width, height, d2, (0.3, 0.5)))
        second = Shape("B", kind_b, col_b, size_b, (0.5, 0.5), moves=(mv,))
    shapes = [a]
    if second is not None:
        # B goes where it never touches A (rejection sampling; the last try if none is clear)
        mx, my = _margin(second.size, width, height)
        best = second
        for _ in range(60):
            start = (_place_path(rng, second.moves, second.size, width, height) if second.moves
                     else (_r(rng.uniform(mx, 1 - mx)), _r(rng.uniform(my, 1 - my))))
            best = replace(second, start=start)
            if _clear_of(a, best, width, height):
                break
        shapes.append(best)
    return Scene(kind=kind, background=background, shapes=tuple(shapes))


# ---------------------------------------------------------------- captions
_SINGLE = (
    "{s} {v3}",  # listed twice: the plain form is the most common wording
    "{s} {v3}",
    "there is {s} that {v3}",
    "we see {s} {vb}",
    "{s} is {vg}",
    "a video of {s} {vg}",
)
_SEQ_OTHER = (
    "{s1} {a3}, then {s2} {b3}",
    "{s1} {a3} and then {s2} {b3}",
    "first {s1} {a3}, then {s2} {b3}",
    "{s2} {b3} after {s1} {a3}",
    "after {s1} {a3}, {s2} {b3}",
    "{s1} {a3} before {s2} {b3}",
    "{s1} {a3}; afterwards {s2} {b3}",
)
_SEQ_SAME = (
    "{s1} {a3}, then {b3}",
    "{s1} {a3} and then {b3}",
    "{s1} first {a3} and then {b3}",
    "{s1} {b3} after {ag}",
    "after {ag}, {s1} {b3}",
    "{s1} {a3} before {bg}",
    "{s1} {a3}, then it {b3}",
)
_SIMULTANEOUS = (
    "{s1} {a3} while {s2} {b3}",
    "{s1} {a3} as {s2} {b3}",
    "{s1} {a3} and {s2} {b3} at the same time",
    "while {s1} {a3}, {s2} {b3}",
)


def _noun(rng: np.random.Generator, shape: Shape) -> str:
    word = str(rng.choice(SHAPES[shape.kind]))
    article = "an" if shape.colour[0] in "aeiou" else "a"
    return f"{article} {shape.colour} {word}"


def _verb(rng: np.random.Generator, event: dict[str, Any]) -> tuple[str, str, str]:
    """(base, third person, gerund) phrase for one event, in a randomly chosen wording."""
    if event["type"] == "appear":
        return _conjugate(str(rng.choice(_APPEAR_VERBS)))
    if event["type"] == "vanish":
        return _conjugate(str(rng.choice(_VANISH_VERBS)))
    d = _conjugate(str(rng.choice(_DIRECTION_VERBS[event["direction"]])))
    if event["profile"] == "constant":
        return d
    s = _conjugate(str(rng.choice(_SPEED_VERBS[event["profile"]])))
    style = int(rng.integers(3))
    if style == 0:
        return tuple(f"{x} and {y}" for x, y in zip(d, s))  # type: ignore[return-value]
    if style == 1:
        return tuple(f"{x}, {s[2]}" for x in d)  # type: ignore[return-value]
    return tuple(f"{y} while {d[2]}" for y in s)  # type: ignore[return-value]


def _overlap(e1: dict[str, Any], e2: dict[str, Any]) -> bool:
    return e1["type"] == e2["type"] == "move" and e1["t0"] < e2["t1"] and e2["t0"] < e1["t1"]


def caption_once(scene: Scene, rng: np.random.Generator) -> str:
    """One caption naming colour, shape and motion/order of every event of ``scene``."""
    events = scene.events()
    if not 1 <= len(events) <= 2:
        raise ValueError(f"scene has {len(events)} events; captions handle 1 or 2")
    if len(events) == 1:
        (e,) = events
        vb, v3, vg = _verb(rng, e)
        text = str(rng.choice(_SINGLE)).format(s=_noun(rng, scene.shape(e["shape"])), vb=vb, v3=v3, vg=vg)
    else:
        e1, e2 = events
        sh1, sh2 = scene.shape(e1["shape"]), scene.shape(e2["shape"])
        (_, a3, ag), (_, b3, bg) = _verb(rng, e1), _verb(rng, e2)
        if _overlap(e1, e2):
            templates = _SIMULTANEOUS
        else:
            templates = _SEQ_SAME if sh1.label == sh2.label else _SEQ_OTHER
        text = str(rng.choice(templates)).format(s1=_noun(rng, sh1), s2=_noun(rng, sh2), a3=a3, ag=ag,
                                                 b3=b3, bg=bg)
    if rng.random() < 0.25:
        text += f" on a {scene.background} background"
    return text


def make_captions(scene: Scene, rng: np.random.Generator, k: int) -> list[str]:
    """``k`` captions of ``scene``, distinct when the wording space allows it."""
    out: list[str] = []
    for _ in range(50 * k):
        c = caption_once(scene, rng)
        if c not in out:
            out.append(c)
            if len(out) == k:
                return out
    while len(out) < k:  # tiny wording space: repeats rather than fewer captions
        out.append(caption_once(scene, rng))
    return out


# ---------------------------------------------------------------- rendering and writing
def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a shape of radius ``r`` given pixel offsets from its centre."""
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        h = r * 0.85
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if kind == "triangle":  # apex up, base at dy = 0.8 r
        top, bottom = -r, 0.8 * r
        half = (dy - top) / (bottom - top) * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if kind == "cross":
        t = r / 3.0
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= t) & (ay <= r)) | ((ay <= t) & (ax <= r))
    raise ValueError(f"unknown shape {kind!r}; one of {sorted(SHAPES)}")


def render_frames(scene: Scene, width: int, height: int, num_frames: int) -> np.ndarray:
    """RGB frames [T, H, W, 3] uint8; frame i shows the scene at t = i / (T - 1)."""
    background = np.empty((height, width, 3), dtype=np.uint8)
    background[:] = BACKGROUNDS[scene.background]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = background  # whole-frame broadcast: ~40x faster than broadcasting one pixel
    scale = min(width, height)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        for sh in scene.shapes:
            if not sh.appear_at <= t <= sh.vanish_at:
                continue
            x, y = sh.position(t)
            cx, cy, r = x * width, y * height, sh.size * scale
            x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
            y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            mask = _shape_mask(sh.kind, xx + 0.5 - cx, yy + 0.5 - cy, r)
            frames[i, y0:y1, x0:x1][mask] = COLOURS[sh.colour]
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, crf: int = 20) -> Path:
    """Encode RGB frames [T, H, W, 3] as h264 (yuv420p) mp4, atomically.

    The file appears under ``path`` only once complete (written as ``.<name>.part``,
    then renamed), so a killed run never leaves a truncated video under its final name.
    Reproducible bytes: one encoder thread, and no x264 macroblock-tree (with it, small
    frames such as 64x48 came out different from run to run, even after decoding).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    _t, height, width, _c = frames.shape
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            stream.options = {"preset": "veryfast", "crf": str(crf), "x264-params": "log=-1:mbtree=0"}
            for arr in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- dataset
@dataclass(frozen=True)
class SynthDataset:
    """Paths and ids of a generated dataset (what later stages and tests need)."""

    root: Path
    videos_dir: Path
    captions_txt: Path  # LAFF/W2VV: "video3#0 a red circle moves left"
    msrvtt_json: Path
    synth_json: Path
    split_files: dict[str, Path]  # "train" / "val" / "test" -> file of ids
    video_ids: list[str]
    splits: dict[str, list[str]]
    captions: dict[str, list[str]] = field(repr=False)

    @property
    def train_txt(self) -> Path:
        return self.split_files["train"]

    @property
    def val_txt(self) -> Path:
        return self.split_files["val"]

    @property
    def test_txt(self) -> Path:
        return self.split_files["test"]

    def video_path(self, video_id: str) -> Path:
        return self.videos_dir / f"{video_id}.mp4"


def split_sizes(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict[str, int]:
    """Videos per split: each non-empty when n >= 3; tiny sets fill train first, then test."""
    if n <= 2:
        return {"train": 1, "val": 0, "test": n - 1} if n else {s: 0 for s in SPLITS}
    val = max(1, round(n * fractions[1]))
    test = max(1, round(n * fractions[2]))
    return {"train": n - val - test, "val": val, "test": test}


def assign_splits(video_ids: Sequence[str], seed: int, pair_size: int = 2) -> dict[str, list[str]]:
    """Random partition of ``video_ids``; consecutive ``pair_size`` ids (a contrast pair) stay
    together except at the two split boundaries."""
    groups = [list(video_ids[i:i + pair_size]) for i in range(0, len(video_ids), pair_size)]
    order = np.random.default_rng([seed, 0x5B117]).permutation(len(groups))
    flat = [v for g in order for v in groups[g]]
    sizes = split_sizes(len(flat))
    test = flat[: sizes["test"]]
    val = flat[sizes["test"]: sizes["test"] + sizes["val"]]
    train = flat[sizes["test"] + sizes["val"]:]
    index = {v: i for i, v in enumerate(video_ids)}
    return {"train": sorted(train, key=index.get), "val": sorted(val, key=index.get),
            "test": sorted(test, key=index.get)}


def _scene_dict(scene: Scene) -> dict[str, Any]:
    d = asdict(scene)
    d["events"] = scene.events()
    return d


def _scene_from_dict(d: dict[str, Any]) -> Scene:
    shapes = tuple(
        Shape(label=s["label"], kind=s["kind"], colour=s["colour"], size=s["size"], start=tuple(s["start"]),
              appear_at=s["appear_at"], vanish_at=s["vanish_at"], moves=tuple(Move(**m) for m in s["moves"]))
        for s in d["shapes"]
    )
    return Scene(kind=d["kind"], background=d["background"], shapes=shapes)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render and caption one video (a pure function of the seed)."""

    video_id: str
    index: int
    fps: int
    num_frames: int
    scene: Scene
    captions: list[str]
    pair: str | None  # id of the contrast partner (same scene played backwards)


def plan_videos(num_videos: int, seed: int, width: int, height: int, duration: tuple[float, float],
                fps_choices: Sequence[int], captions_per_video: int) -> list[VideoSpec]:
    """Scenes, timings and captions of every video, without rendering anything.

    Independent random streams per (seed, video) keep video i the same whatever N is.
    """
    specs = []
    for i in range(num_videos):
        pair_index, member = divmod(i, 2)
        base = sample_scene(np.random.default_rng([seed, pair_index, 0]), width, height)
        scene = reverse_scene(base) if member else base
        partner = i ^ 1
        timing = np.random.default_rng([seed, i, 2])
        fps = int(timing.choice(list(fps_choices)))
        num_frames = max(2, int(round(timing.uniform(*duration) * fps)))
        caps = make_captions(scene, np.random.default_rng([seed, i, 1]), captions_per_video)
        specs.append(VideoSpec(f"video{i}", i, fps, num_frames, scene, caps,
                               f"video{partner}" if partner < num_videos else None))
    return specs


def _params(num_videos: int, seed: int, width: int, height: int, duration: tuple[float, float],
            fps_choices: Sequence[int], captions_per_video: int, crf: int) -> dict[str, Any]:
    return {"version": SYNTH_VERSION, "seed": seed, "num_videos": num_videos, "width": width,
            "height": height, "duration": [float(duration[0]), float(duration[1])],
            "fps_choices": [int(f) for f in fps_choices], "captions_per_video": captions_per_video,
            "crf": crf, "codec": "h264"}


def _validate(out: Path, num_videos: int, seed: int, width: int, height: int,
              duration: tuple[float, float], fps_choices: Sequence[int], captions_per_video: int) -> None:
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise VidfuseError(f"number of videos must be an integer >= 1, got {num_videos!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise VidfuseError(f"seed must be a non-negative integer, got {seed!r}")
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v < 32 or v % 2:
            raise VidfuseError(f"{name} must be an even integer >= 32 (h264 yuv420p), got {v!r}")
    if not (0 < duration[0] <= duration[1]):
        raise VidfuseError(f"duration range must satisfy 0 < min <= max, got {tuple(duration)}")
    if not fps_choices or any(int(f) < 1 for f in fps_choices):
        raise VidfuseError(f"fps choices must be positive integers, got {list(fps_choices)}")
    if captions_per_video < 1:
        raise VidfuseError(f"captions per video must be >= 1, got {captions_per_video}")
    if out.exists() and not out.is_dir():
        raise VidfuseError(f"output {out} exists and is not a directory")


def _check_resume(out: Path, params: dict[str, Any]) -> None:
    """Refuse to mix datasets: an existing OUT must hold the same generator parameters."""
    meta = out / "synth.json"
    if meta.is_file():
        try:
            old = json.loads(meta.read_text(encoding="utf-8")).get("params", {})
        except (json.JSONDecodeError, AttributeError) as exc:
            raise VidfuseError(f"{meta} is not a synth metadata file ({exc}); remove it or pick another OUT")
        diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {params.get(k)!r}" for k in diff)
            raise VidfuseError(f"{out} already holds a synthetic dataset made with other parameters "
                               f"({shown}); remove it or choose another output directory")
    elif any((out / "videos").glob("*.mp4")):
        raise VidfuseError(f"{out / 'videos'} already holds .mp4 files that synth did not write "
                           "(no synth.json); choose an empty output directory")


def generate_dataset(
    out_dir: str | Path,
    num_videos: int,
    seed: int = 0,
    *,
    width: int = 128,
    height: int = 96,
    duration: tuple[float, float] = (2.0, 4.0),
    fps_choices: Sequence[int] = DEFAULT_FPS_CHOICES,
    captions_per_video: int = 5,
    crf: int = 20,
    progress: bool = True,
) -> SynthDataset:
    """Write a procedural text-video dataset under ``out_dir`` and return its paths and ids.

    Rerunning into the same ``out_dir`` with the same arguments resumes: finished videos are
    kept (a video exists under its final name only when complete). Different arguments
    into a directory that holds a dataset raise :class:`VidfuseError`.
    """
    out = Path(out_dir)
    duration = (float(duration[0]), float(duration[1]))
    _validate(out, num_videos, seed, width, height, duration, fps_choices, captions_per_video)
    params = _params(num_videos, seed, width, height, duration, fps_choices, captions_per_video, crf)
    _check_resume(out, params)
    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    for stale in videos_dir.glob(".*.part"):
        stale.unlink()

    specs = plan_videos(num_videos, seed, width, height, duration, fps_choices, captions_per_video)
    ids = [s.video_id for s in specs]
    splits = assign_splits(ids, seed)
    for name in SPLITS:
        if not splits[name]:
            log.warning("split %r is empty: %d video(s) are too few for train/val/test", name, num_videos)
    split_of = {v: name for name, vs in splits.items() for v in vs}

    meta = {
        "generator": "vidfuse.synth",
        "params": params,
        "libraries": {"pyav": av.__version__, "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))},
        "videos": [
            {"video_id": s.video_id, "split": split_of[s.video_id], "fps": s.fps, "num_frames": s.num_frames,
             "duration": round(s.num_frames / s.fps, 4), "width": width, "height": height,
             "contrast_pair": s.pair, "scene": _scene_dict(s.scene), "captions": s.captions}
            for s in specs
        ],
    }
    # parameters first: a killed run can be resumed (and is recognised) from them
    _atomic_write_text(out / "synth.json", json.dumps(meta, indent=1) + "\n")

    todo = [s for s in specs if not (videos_dir / f"{s.video_id}.mp4").is_file()]
    if len(todo) < len(specs):
        log.info("resuming: %d of %d videos already written", len(specs) - len(todo), len(specs))
    started = time.perf_counter()
    for s in tqdm(todo, desc="synth", unit="video", disable=not progress or not todo):
        write_mp4(videos_dir / f"{s.video_id}.mp4", render_frames(s.scene, width, height, s.num_frames),
                  s.fps, crf)
    log.debug("rendered %d videos in %.2fs", len(todo), time.perf_counter() - started)

    captions = {s.video_id: s.captions for s in specs}
    _atomic_write_text(out / "captions.txt",
                       "".join(f"{v}#{k} {c}\n" for v, cs in captions.items() for k, c in enumerate(cs)))
    sentences, sen_id = [], 0
    for v, cs in captions.items():
        for c in cs:
            sentences.append({"caption": c, "video_id": v, "sen_id": sen_id})
            sen_id += 1
    msrvtt = {
        "info": {"description": f"vidfuse synthetic dataset (seed {seed})", "version": SYNTH_VERSION},
        "videos": [{"video_id": s.video_id, "id": s.index, "split": MSRVTT_SPLIT_NAMES[split_of[s.video_id]],
                    "category": 0, "start time": 0.0, "end time": round(s.num_frames / s.fps, 4)}
                   for s in specs],
        "sentences": sentences,
    }
    _atomic_write_text(out / "MSRVTT_data.json", json.dumps(msrvtt, indent=1) + "\n")
    split_files = {name: out / f"{name}.txt" for name in SPLITS}
    for name in SPLITS:
        _atomic_write_text(split_files[name], "".join(f"{v}\n" for v in splits[name]))
    return SynthDataset(root=out, videos_dir=videos_dir, captions_txt=out / "captions.txt",
                        msrvtt_json=out / "MSRVTT_data.json", synth_json=out / "synth.json",
                        split_files=split_files, video_ids=ids, splits=splits, captions=captions)


def open_dataset(out_dir: str | Path) -> SynthDataset:
    """The :class:`SynthDataset` of a directory :func:`generate_dataset` completed."""
    out = Path(out_dir)
    meta_path = out / "synth.json"
    if not meta_path.is_file():
        raise VidfuseError(f"{meta_path} not found: {out} is not a synthetic dataset")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    ids = [v["video_id"] for v in meta["videos"]]
    missing = [v for v in ids if not (out / "videos" / f"{v}.mp4").is_file()]
    if missing or not (out / "captions.txt").is_file():
        raise VidfuseError(f"{out} is incomplete ({len(missing)} videos missing); rerun synth to resume")
    splits = {name: [v["video_id"] for v in meta["videos"] if v["split"] == name] for name in SPLITS}
    return SynthDataset(root=out, videos_dir=out / "videos", captions_txt=out / "captions.txt",
                        msrvtt_json=out / "MSRVTT_data.json", synth_json=meta_path,
                        split_files={name: out / f"{name}.txt" for name in SPLITS}, video_ids=ids,
                        splits=splits, captions={v["video_id"]: v["captions"] for v in meta["videos"]})


def scene_of(dataset: SynthDataset, video_id: str) -> Scene:
    """The :class:`Scene` a video of ``dataset`` shows (from synth.json)."""
    meta = json.loads(dataset.synth_json.read_text(encoding="utf-8"))
    for v in meta["videos"]:
        if v["video_id"] == video_id:
            return _scene_from_dict(v["scene"])
    raise VidfuseError(f"video {video_id!r} not in {dataset.synth_json}")


def order_dependent_captions(dataset: SynthDataset, split: str) -> list[str]:
    """Caption ids (``video3#0``) of ``split`` whose meaning depends on event order or direction.

    Every caption names a motion or an appear/vanish event, and a video's contrast twin is the
    same frames played backwards, for which the caption is wrong (opposite direction, swapped
    speed change, appear <-> vanish, reversed order). So a caption is order-dependent in a
    gallery that holds its video's twin: only a model that sees temporal order ranks its own
    video above the twin. These are the captions of the split's videos whose twin is in it too.
    """
    members = set(dataset.splits[split])
    meta = json.loads(dataset.synth_json.read_text(encoding="utf-8"))
    return [f"{v['video_id']}#{k}" for v in meta["videos"]
            if v["video_id"] in members and v["contrast_pair"] in members for k in range(len(v["captions"]))]
