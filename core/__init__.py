"""What every process needs, and the contracts the packages above share: settings, the runtime
and its clients (ClickHouse, Redis, the publisher, storage), migrations, metrics, logging and
redaction, the supervisor and the ops endpoints; the published messages, Redis key names, job
names, ids and the limits several packages must agree on."""
