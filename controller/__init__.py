"""evsed: the charge-point application (connector state machine, limiter, OCPP, store, CLI)."""

__version__ = "0.1.0"
