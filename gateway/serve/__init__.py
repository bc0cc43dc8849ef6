"""The process shell around the gateway app: the ``stripe-gateway`` command
(:mod:`~gateway.serve.cli`), the listening server and graceful drain
(:mod:`~gateway.serve.server`), worker processes under a supervisor
(:mod:`~gateway.serve.workers`), config reload under traffic (:mod:`~gateway.serve.reload`)
and the admin listener (:mod:`~gateway.serve.admin`)."""
