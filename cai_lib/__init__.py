"""cai-stage1: bootstrap a base language model into an instruction follower (Stage 1)."""

__version__ = "0.1.0"
