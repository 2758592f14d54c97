"""Assemble a stream job from its configuration: feature spec, engine, optional model."""

from __future__ import annotations

from netsift.features import FeatureSpec, compute_features
from netsift.stream.runner import StreamConfig, StreamJob


def build_stream_job(config: StreamConfig) -> StreamJob:
    spec = FeatureSpec(window_ns=int(round(config.window_s * 1e9)), node=config.node,
                       validated_only=config.validated_only)
    score = None
    if config.model is not None:
        from netsift.pipeline import load_scorer

        score = load_scorer(config.model, spec)
    return StreamJob(config, featurize=lambda packets: compute_features(packets, spec),
                     score=score, columns=spec.input_columns())
