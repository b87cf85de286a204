# syntax=docker/dockerfile:1
#
# infobip-push-poller: build a wheel, install it into a venv, ship the venv on a slim base.
#
#   docker build -t infobip-push-poller .
#   docker run -d --name poller --network poller-net \
#       -e POLLER_INFOBIP__BASE_URL=https://xxxxx.api.infobip.com -e POLLER_INFOBIP__API_KEY=... \
#       -e POLLER_INFOBIP__APPLICATIONS=your-app -e POLLER_REDIS__URL=redis://redis:6379/0 \
#       -v poller-spool:/var/lib/infobip-push-poller -p 127.0.0.1:9464:9464 infobip-push-poller
#   (deploy/OPERATIONS.md: the network and the Redis container it names)
#
# Stopping: SIGTERM turns readiness to 503, lets the poll cycle in flight finish within
# POLLER_SCHEDULE__GRACE_PERIOD (default 25 s), flushes the spool and exits 0. Give the
# container at least that plus 5 s before the SIGKILL: `docker stop -t 30` (Compose:
# stop_grace_period: 30s; Kubernetes: terminationGracePeriodSeconds: 30). A SIGKILL loses
# nothing (the spool is on the volume and is replayed at the next start) but delays delivery.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency and the build backend come hash-pinned from deploy/requirements/ (the
# dependencies' layer stays cached while only the code changes); the wheel adds no others.
COPY deploy/requirements/runtime.txt deploy/requirements/build.txt deploy/requirements/
# The shipped venv gets no pip or setuptools of its own (nothing installs at run time): the
# build venv's pip installs into it with --python.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes -r deploy/requirements/build.txt \
    && python -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
       -r deploy/requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY poller/ poller/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-deps /wheels/*.whl

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="infobip-push-poller" \
      org.opencontainers.image.description="Infobip inbound push messages into Redis streams, none lost" \
      org.opencontainers.image.licenses="MIT"
# A fixed uid/gid, so volume ownership and Kubernetes runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 poller \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/infobip-push-poller --shell /usr/sbin/nologin poller \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/infobip-push-poller
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POLLER_SPOOL__PATH=/var/lib/infobip-push-poller/spool.db \
    POLLER_HEALTH__HOST=0.0.0.0 \
    POLLER_HEALTH__PORT=9464 \
    POLLER_LOG__FORMAT=json
# The spool must outlive the container: it holds messages Infobip no longer has.
VOLUME ["/var/lib/infobip-push-poller"]
WORKDIR /var/lib/infobip-push-poller
USER 10001:10001
# 9464: health and metrics; 8088: the HTTP forward receiver (when POLLER_FORWARD__APPLICATIONS is set).
EXPOSE 9464 8088
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["poller", "check"]
ENTRYPOINT ["poller"]
CMD ["run"]
