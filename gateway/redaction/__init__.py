"""Redaction engines, used by plugins only (the ``redaction`` and ``audit`` plugins): what
is sensitive (:mod:`~gateway.redaction.sensitive`), how it is masked
(:mod:`~gateway.redaction.masks`), Stripe's bracket-notation form parameters
(:mod:`~gateway.redaction.params`), bodies and their fast paths
(:mod:`~gateway.redaction.bodies`), and the redactor and log processor built on them
(:mod:`~gateway.redaction.redact`)."""
