"""Hugging Face model cards for ILM checkpoints (see `model_cards.generate`)."""

from .generate import build_model_card, write_model_card

__all__ = ["build_model_card", "write_model_card"]
