"""clip-ft: the fine-tuning stage of :mod:`fusion.finetune` with ``extractor: clip``, under its earlier names."""

from fusion.finetune import (CLIP_FT, CLIP_FT_INFO, EXTRACT_CONFIG, ClipFtConfig, ClipFtData,  # noqa: F401
                             ClipFtDataError, ClipFtLossConfig, ClipFtResult, VideoFrames, VideoSet, ZeroShot,
                             batch_captions, build_start_model, finetune_clip, load_clip_ft_data,
                             random_segment_indices, resolve_clip_ft_config, run_finetune_clip, zero_shot_metrics)
