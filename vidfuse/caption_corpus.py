"""Caption files of real size (MSR-VTT has 200k captions) with a realistic vocabulary.

Why: memory and time of the text stages depend on how many captions there are and on how
their words are spread (a few thousand words, a handful very frequent, most rare), not on
what the words mean. Words follow a Zipf law over ``vocabulary`` pronounceable made-up words,
with the usual English function words at the top ranks; a caption has 4 to 20 words. The
same arguments always give the same file.

Layout written into ``folder``: ``captions.txt`` (LAFF ``<video>#<k> <caption>`` lines,
``captions_per_video`` per video) and ``train.txt`` / ``val.txt`` / ``test.txt`` (80/10/10
of the videos), as ``vidfuse extract-text`` and ``train`` read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FUNCTION_WORDS = ("a", "the", "is", "in", "on", "and", "of", "with", "man", "woman", "are", "to")
_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "cl", "dr", "fl", "gr", "pl", "st", "tr", "sh", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")


def made_up_words(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct lowercase words of two or three syllables."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.integers(2, 4)
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(syllables))
        words.setdefault(word)
    return list(words)


def write_caption_corpus(folder: str | Path, captions: int, vocabulary: int = 4000, captions_per_video: int = 20,
                         seed: int = 0, zipf: float = 1.1) -> Path:
    """Write ``captions.txt`` and split files of ``captions`` captions into ``folder``; returns the caption file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = np.asarray(list(FUNCTION_WORDS) + made_up_words(vocabulary - len(FUNCTION_WORDS), seed), dtype=object)
    weights = 1.0 / np.arange(1, len(words) + 1) ** zipf
    rng = np.random.default_rng(seed)
    videos = -(-captions // captions_per_video)
    path = folder / "captions.txt"
    block = 50_000  # lines per write: memory does not grow with the file
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, captions, block):
            n = min(block, captions - start)
            lengths = rng.integers(4, 21, size=n)
            drawn = words[rng.choice(len(words), size=int(lengths.sum()), p=weights / weights.sum())]
            ends = np.cumsum(lengths)
            lines = []
            for i, (lo, hi) in enumerate(zip(ends - lengths, ends)):
                k = start + i
                lines.append(f"video{k // captions_per_video}#{k % captions_per_video} {' '.join(drawn[lo:hi])}\n")
            out.write("".join(lines))
    ids = [f"video{v}" for v in range(videos)]
    n_train, n_val = int(videos * 0.8), int(videos * 0.1)
    for name, part in (("train", ids[:n_train]), ("val", ids[n_train : n_train + n_val]), ("test", ids[n_train + n_val :])):
        (folder / f"{name}.txt").write_text("".join(v + "\n" for v in part), encoding="utf-8")
    return path
