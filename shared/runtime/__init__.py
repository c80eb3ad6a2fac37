"""The event runtime, the same handlers on every transport: the consumer core, unit of work and
outbox, the handlers' ports, the embedded bus, the Kafka runtime, dead letters, and `drive`."""
