"""The annotation engine (docs/annotation.md): segmentation at event boundaries, branch
annotators for speech, music and general audio, one unified caption per clip, and SFT data.

It sits below the running services and the pipelines (both call it) and above the core; it
loads torch (voice activity, the speech model), so the gateway never imports it."""
