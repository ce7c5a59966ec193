"""Beam building blocks of the offer pipeline: parsing, features, endpoint calls, outputs."""

# Every Beam metric of the pipeline lives under this namespace.
NAMESPACE = "offer_pipeline"
