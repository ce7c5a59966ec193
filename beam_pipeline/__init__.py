"""Offer pipeline: member exports -> features -> predictions -> offers, on Apache Beam."""
from beam_pipeline import logs as _logs

_logs.hide_unused_gcp_client_warning()  # before anything imports apache_beam
