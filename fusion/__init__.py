"""Fusion heads (LAFF, LAFF-ml, DLLFA, baselines), their losses, and the trainer.

Public entry points (import from the submodules; listed here for orientation):

- ``fusion.data``: ``FeatureBank``, ``TrainData``, ``collate_videos``, ``collate_texts``, ``feature_dims``
- ``fusion.config`` / ``fusion.factory``: ``HeadConfig`` (+ per-head sections), ``build_head``
- ``fusion.heads``: ``RetrievalHead`` (the interface every head implements)
- ``fusion.trainer``: ``TrainConfig``, ``train``, ``TrainResult``, ``validate``
- ``fusion.checkpoint``: ``load_run``, ``check_banks``
- ``fusion.encode``: ``encode_videos``, ``encode_texts``, ``similarity_matrix``, ``rerank_scores``
"""
