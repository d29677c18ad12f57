"""RabbitMQ: the domain-event consumer, payload schemas and mapping, and the event publisher."""
