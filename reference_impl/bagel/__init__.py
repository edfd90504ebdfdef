"""Minimal BAGEL (Mixture-of-Transformers unified multimodal model) in PyTorch."""
