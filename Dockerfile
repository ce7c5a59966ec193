# The one image of a Dataflow deployment. Dataflow workers run the Beam SDK harness in it
# (--sdk_container_image), and the Flex Template launcher runs the CLI in it (main.py), so the
# job is built and executed by the same code with the same dependency versions.
#   base: Beam's Python 3.11 SDK image at the Beam version setup.py pins, with the Flex Template
#   launcher binary copied from Google's Python 3.11 launcher base image.
# Built by cloudbuild.yaml; see docs/dataflow.md ("Release a partner's template").
ARG BEAM_VERSION=2.77.0
ARG LAUNCHER_TAG=flex_templates_base_image_release_20260122_RC00

FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:${LAUNCHER_TAG} AS launcher

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY setup.py main.py ./
COPY beam_pipeline/ beam_pipeline/
COPY transforms/ transforms/
COPY lantern/ lantern/
COPY partner_options/ partner_options/

# Editable install: partner_options/ stays beside the package, where partner.py looks for it.
# apache-beam[gcp] is already in the base image at the pinned version; pip check fails the
# build if anything installed here conflicts with it.
RUN pip install --no-cache-dir -e ".[dataflow]" \
    && pip check

# The image's own name, given by cloudbuild.yaml: the CLI hands it to Dataflow as the worker
# image, so a Flex Template launch runs its workers on exactly the image that launched it.
ARG LANTERN_IMAGE=""
ENV LANTERN_IMAGE=${LANTERN_IMAGE} \
    FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py \
    PYTHONDONTWRITEBYTECODE=1

# Workers start the SDK harness; the Flex Template launcher is started by Dataflow explicitly.
ENTRYPOINT ["/opt/apache/beam/boot"]
