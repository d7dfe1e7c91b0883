"""Training recipes for image classification with Vision Transformers, on Hugging Face libraries."""

__version__ = "0.1.0"
