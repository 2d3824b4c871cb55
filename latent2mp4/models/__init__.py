"""Model decoders: one module or sub-package per family (`registry` finds them by name), shared
primitives in `layers`, the weightless preview in `preview`, the tiny decoders in `tiny`."""
