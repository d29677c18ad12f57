"""The domain events the platform publishes on RabbitMQ, consumed: the supervised consumer,
the payload schemas, the columns they map to and the mapping into `analytics_events`."""
