# syntax=docker/dockerfile:1
# The stripe-gateway container image (docs/deploy.md, "Container image"):
#   docker build -t stripe-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v /etc/stripe-gateway:/etc/stripe-gateway:ro --env-file secrets.env stripe-gateway:0.1.0
# The process is PID 1 and handles the signals itself: SIGTERM drains, SIGHUP reloads the
# config (and TLS files), SIGUSR1 reopens the audit file.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY plugins ./plugins
COPY sandbox ./sandbox
# speed: uvloop; otel: the optional tracing plugin (plugins.tracing)
RUN python -m venv /opt/stripe-gateway \
    && /opt/stripe-gateway/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/stripe-gateway/bin/pip install --no-cache-dir ".[speed,otel]"

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 stripe-gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/stripe-gateway \
       --create-home --shell /usr/sbin/nologin stripe-gateway
COPY --from=build /opt/stripe-gateway /opt/stripe-gateway
ENV PATH=/opt/stripe-gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/stripe-gateway
# the public listener ([server] port) and the admin listener ([admin] port)
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["stripe-gateway"]
CMD ["serve", "--config", "/etc/stripe-gateway/gateway.toml"]
