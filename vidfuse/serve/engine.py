"""One ``--run/--index`` pair loaded for serving: the adapter between the server and the search code.

Results come from :meth:`index.search.Searcher.query`, the code path of ``vidfuse search``, so
the page and the command list the same videos with the same scores. On top of the hits this
module adds what only the fusion head knows: the attention weights of LAFF heads (video side
computed once per indexed video at load time, text side per query) and DLLFA's two stages
(gist score, full score, and the frames the relevance level attended to).

A reload builds a whole new :class:`Snapshot` beside the one serving and then swaps the
reference, so queries never see half of an old index and half of a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class VideoAttention:
    """Per indexed video (rows in index order): feature -> per-head weights, frames -> per-frame weights."""

    features: dict[str, np.ndarray]  # name -> [N, heads]
    frames: dict[str, list[np.ndarray]]  # feature name -> per video [T]


@dataclass
class Snapshot:
    """Everything loaded from one run and one index folder; replaced whole by a reload."""

    searcher: Any  # index.search.Searcher
    sets: dict  # video feature name -> pipeline.features.FeatureSet (manifest rows of every video)
    attention: VideoAttention | None
    loaded_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def head(self):
        return self.searcher.run.head


class Engine:
    """A named run + index; ``search`` and ``video`` read the current snapshot."""

    def __init__(self, name: str, run_dir: str, index_dir: str, features_dir: str | None = None,
                 device: str = "cpu"):
        self.name, self.run_dir, self.index_dir = name, run_dir, index_dir
        self.features_arg, self.device = features_dir, device
        self._reload_lock = threading.Lock()
        self.snapshot = self._load()

    # -- loading ------------------------------------------------------------------------
    def _load(self) -> Snapshot:
        from index.search import Searcher

        searcher = Searcher(self.run_dir, self.index_dir, self.features_arg, self.device)
        sets = _video_feature_sets(searcher)
        return Snapshot(searcher, sets, _video_attention(searcher, sets), time.time())

    def reload(self) -> None:
        """Load the run and the index folder again (another process swapped it) and swap them in.

        A failed load raises and leaves the serving snapshot as it was.
        """
        with self._reload_lock:
            fresh = self._load()
            self.snapshot = fresh
        log.info("%s: reloaded %s (%d videos)", self.name, self.index_dir, len(fresh.searcher.index))

    # -- description --------------------------------------------------------------------
    def describe(self) -> dict:
        snap = self.snapshot
        s = snap.searcher
        meta = s.index.meta
        return {
            "name": self.name,
            "run": s.run.path,
            "head": s.run.config.head.type,
            "index": os.path.abspath(self.index_dir),
            "split": meta.get("extra", {}).get("split"),
            "factory": meta.get("factory"),
            "count": len(s.index),
            "dim": s.index.dim,
            "device": s.index.device,
            "features": s.features_dir,
            "video_dirs": list(s.video_dirs),
            "two_stage": s.videos is not None,
            "attention": snap.attention is not None or s.videos is not None,
            "loaded_at": snap.loaded_at,
        }

    @property
    def split(self) -> str | None:
        return self.describe()["split"]

    # -- search -------------------------------------------------------------------------
    def search(self, text: str, k: int) -> dict:
        snap = self.snapshot
        with snap.lock:  # one query at a time per loaded head: encoding switches the head's eval mode
            start = time.perf_counter()
            query = snap.searcher.query(text, k)
            explained = _explain(snap, query)
            took = (time.perf_counter() - start) * 1000
        results = []
        for i, hit in enumerate(query.hits):
            available = self.video_file(hit.video_id, hit.path)[0] is not None if hit.path else False
            results.append({"rank": hit.rank, "video_id": hit.video_id, "score": hit.score,
                            "video_available": available, **(self.urls(hit.video_id) if available else {}),
                            "thumbnail_tiles": len(self.strip_frames(hit.video_id)) if available else 0,
                            **explained[i]})
        return {"run": self.name, "query": text, "k": k, "took_ms": took, "results": results}

    def has_video(self, video_id: str) -> bool:
        from index.faiss_index import IndexStoreError

        try:
            self.snapshot.searcher.index.position(video_id)
        except IndexStoreError:
            return False
        return True

    def video_file(self, video_id: str, found: str | None = None) -> tuple[str | None, str | None]:
        """(real path, None) of the file the features were read from, or (None, why it is not available).

        Only a regular file whose real path lies under a recorded video folder is given out.
        """
        from vidfuse.serve.media import safe_video_file

        dirs = self.snapshot.searcher.video_dirs
        found = found or self.snapshot.searcher.video_path(video_id)
        if found is None:
            return None, f"video not available: no file for {video_id!r} in the recorded video folders {dirs}"
        real = safe_video_file(found, dirs)
        if real is None:
            return None, f"video not available: the file of {video_id!r} resolves outside the recorded video folders"
        return real, None

    def urls(self, video_id: str) -> dict:
        path, run = quote(video_id), quote(self.name, safe="")
        return {"media_url": f"/api/media/{path}?run={run}", "thumbnails_url": f"/api/thumbnails/{path}?run={run}"}

    def video_meta(self, video_id: str) -> dict:
        """Manifest metadata of one indexed video (what each feature set sampled)."""
        snap = self.snapshot
        features = {}
        for name, fs in snap.sets.items():
            if video_id not in fs:
                continue
            m = fs.manifest
            features[name] = {"model": m.model, "weights": m.weights, "dim": m.dim, "level": m.level,
                              "sampling": m.sampling,
                              "frame_indices": np.asarray(fs.frame_indices(video_id)).reshape(-1).tolist()}
        return {"video_id": video_id, "run": self.name, "features": features}

    def strip_frames(self, video_id: str) -> list[int]:
        """Source frames of the thumbnail strip: those of a per-frame feature (DLLFA and LAFF
        frame pools attend over exactly these, tile i = frame weight i), else of any feature."""
        from vidfuse.serve.media import strip_frames

        snap = self.snapshot
        for name in sorted(snap.sets, key=lambda n: (snap.sets[n].manifest.level != "frame", n)):
            fs = snap.sets[name]
            if video_id not in fs:
                continue
            frames = np.asarray(fs.frame_indices(video_id)).reshape(-1).tolist()
            # frame features: one tile per row, repeats kept; clip windows (X3D): distinct frames
            return strip_frames(frames if fs.manifest.level == "frame" else sorted(set(frames)))
        return []


def _video_feature_sets(searcher) -> dict:
    """The FeatureSets of the head's video features (every row): per-video manifest rows."""
    from pipeline.features import load_feature_set
    from pipeline.training_set import _base, head_features

    sets = {}
    for base in dict.fromkeys(_base(n) for n in head_features(searcher.run.config.head)[0]):
        try:
            sets[base] = load_feature_set(os.path.join(searcher.features_dir, base), name=base)
        except Exception as exc:  # noqa: BLE001 - features brought from elsewhere: serve ids only
            log.warning("video details without %s features: %s", base, exc)
    return sets


def _video_attention(searcher, sets: dict) -> VideoAttention | None:
    """LAFF: each indexed video's fusion weights, computed once (they do not depend on the query)."""
    from fusion.encode import encode_bank
    from fusion.heads import RetrievalHead
    from pipeline.training_set import head_features, load_video_bank

    head = searcher.run.head
    if searcher.videos is not None or type(head).attention is RetrievalHead.attention:
        return None  # re-ranking heads explain per query; heads without attention have none
    ids = searcher.index.ids
    missing = [v for v in ids if not all(v in fs for fs in sets.values())] if sets else ids[:1]
    if missing:
        log.warning("no video attention: %d indexed videos (e.g. %s) are not in %s", len(missing), missing[0],
                    searcher.features_dir)
        return None
    bank, _ = load_video_bank(searcher.features_dir, head_features(searcher.run.config.head)[0], ids)
    emb = encode_bank(head, bank, "video")
    weights = {k: v.detach().float().cpu().numpy() for k, v in head.attention(emb, "video").items()}
    frames = {}
    for key in [k for k in weights if k.startswith("frames:")]:
        matrix = weights.pop(key)
        base = key.split(":", 1)[1].split("@")[0]
        offsets = bank.frames[base][1]
        frames[base] = [matrix[i, : offsets[i + 1] - offsets[i]] for i in range(len(ids))]
    return VideoAttention({k: v.reshape(len(ids), -1) for k, v in weights.items()}, frames)


def _explain(snap: Snapshot, query) -> list[dict]:
    """Per hit: LAFF attention (video and text side), or DLLFA's gist/full scores and attended frames."""
    import torch

    head = snap.head
    out: list[dict] = [{} for _ in query.hits]
    if not query.hits:
        return out
    if snap.attention is not None:
        text = {k: v.detach().float().cpu().numpy()[0].reshape(-1).tolist()
                for k, v in head.attention(query.text_emb, "text").items() if not k.startswith("frames:")}
        for i, pos in enumerate(query.positions):
            out[i]["attention"] = {
                "video": {k: v[pos].tolist() for k, v in snap.attention.features.items()},
                "text": text,
                "frames": {k: v[pos].tolist() for k, v in snap.attention.frames.items()},
            }
    elif snap.searcher.videos is not None and hasattr(head, "frame_attention"):
        from fusion.encode import encode_bank

        rows = np.asarray(query.positions, np.int64)
        with torch.no_grad():
            video_emb = encode_bank(head, snap.searcher.videos, "video", rows)
            n = len(rows)
            weights = head.frame_attention(query.text_emb, video_emb, torch.zeros(n, dtype=torch.long),
                                           torch.arange(n)).float().cpu().numpy()
            mask = video_emb["mask"].cpu().numpy()
        frame_feature = head.frames_key.split("@")[0]
        for i in range(n):
            out[i]["two_stage"] = {"gist_score": query.first_stage[i], "full_score": query.hits[i].score,
                                   "frame_feature": frame_feature,
                                   "frame_attention": weights[i][mask[i]].tolist()}
    return out
