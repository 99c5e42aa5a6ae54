"""Transports: turn bytes on a wire into batches of frames for the engine."""
