"""Input pipelines (grain streams of interleaved documents, image-text and video-text pairs)."""
