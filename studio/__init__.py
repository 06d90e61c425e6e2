"""Studio: a plugin-based backend for text-to-image generation."""
