"""One Beam ModelHandler per video extractor, for RunInference.

RunInference loads the model through the handler once per worker process and shares it between
the process's threads (Beam's ``shared.Shared``); a Dataflow GPU worker runs one SDK process per
vCPU with several threads each, so without it every DoFn instance held its own CLIP + X3D +
irCSN. On a GPU machine, ``model_copies`` models can serve every process of the machine
(``share_model_across_processes``; ``inference.model_copies`` in the config). Batches are sized in model units (frames for a frame-level
extractor, clips for a clip-level one), ``max_units`` per batch: ``--batch-videos`` videos' worth
(:func:`units_per_video`), so a batch of short and long videos is no larger than that.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipeline.done_set import METRICS_NAMESPACE

PRECISIONS = ("fp32", "bf16", "fp16")


def units_per_video(sampling) -> int:
    """Units a video gives under ``sampling`` (fps sampling: its cap, else 8 as a guess)."""
    if sampling.kind == "clips":
        return int(sampling.clips)
    if sampling.kind == "uniform":
        return int(sampling.num_frames)
    return int(sampling.max_frames or 8)


def units_of(video) -> int:
    """Model units of one decoded video: sampled frames (frame level) or clips (clip level)."""
    return int(np.asarray(video.indices).shape[0]) or 1


class VideoModelHandler(ModelHandler):
    """DecodedVideo -> FeatureRow with the extractor ``name`` built from ``config``."""

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        device: str,
        *,
        max_units: int,
        precision: str = "fp32",
        torch_threads: Optional[int] = None,
        model_copies: Optional[int] = None,
    ):
        super().__init__(
            min_batch_size=1,
            max_batch_size=max(1, max_units),  # counted in units: BatchElements sums element_size_fn
            element_size_fn=units_of,
            model_copies=model_copies,
        )
        self.name, self.config, self.device = name, dict(config), device
        self.precision, self.torch_threads = precision, torch_threads

    def load_model(self):
        from apache_beam.metrics import Metrics

        from extractors.registry import build_extractor

        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        Metrics.counter(METRICS_NAMESPACE, f"{self.name}_models_built").inc()
        extractor = build_extractor(self.name, self.config, device=self.device)
        extractor.set_precision(self.precision)
        return extractor

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> Iterable[Any]:
        import torch

        from pipeline.shards import FeatureRow

        if not batch:  # RunInference may hand over an empty batch
            return
        units = [model.units(torch.from_numpy(video.frames)) for video in batch]
        features = model.embed(torch.cat(units))
        start = 0
        for video, unit in zip(batch, units):
            unit_features = features[start : start + len(unit)]
            start += len(unit)
            yield FeatureRow(
                video_id=video.video_id,
                feature=model.pool(unit_features).astype(np.float32),
                frames=unit_features.astype(np.float32),
                num_frames=video.num_frames,
                frame_indices=np.asarray(video.indices, dtype=np.int64).ravel(),
                source=video.source,
            )

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return int(sum(video.frames.nbytes for video in batch))

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}_{self.name}"
