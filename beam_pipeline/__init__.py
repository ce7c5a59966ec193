"""Offer pipeline: member exports -> features -> predictions -> offers, on Apache Beam."""
