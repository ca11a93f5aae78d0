"""Test oracles: independent implementations the tests and benchmarks compare against."""

from .reference import ReferenceMossAudio

__all__ = ["ReferenceMossAudio"]
