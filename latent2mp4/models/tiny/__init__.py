"""Tiny decoders (`--decoder tiny`): small distilled decoders that approximate a family's VAE."""
