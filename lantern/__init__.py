"""Plain modules of the product: the partner model, feature math and errors; no Beam steps, no CLI.

Imports point one way: ``beam_pipeline`` (CLI, assembly) -> ``transforms`` (Beam steps) -> ``lantern``.
"""
