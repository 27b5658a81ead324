"""Reliable messaging between the services: the local message table and everything around it.

- `topology`: the exchanges, queues, bindings and dead-lettering, declared whole by every process.
- `connection`: one AMQP connection per process, reopened with capped backoff whenever it drops.
- `publisher`: publishing with confirms; a refused message is told apart from an unreachable broker.
- `outbox`: the outbox table and its states; `relay`: publishes due rows under a short lease.
- `inbox`: the inbox table and the unit of work that claims, applies and emits in one transaction.
- `consumer`: delivers messages to a handler, acks after it committed, parks what is the message's fault.
- `parking`: replays or purges the messages a consumer gave up on; queue depths for the checker.
- `failures`: which errors are the world's (wait them out) and which are the message's (count them).
- `retention`: prunes SENT outbox rows and inbox rows older than the retention.

The rule that ties them together: an unreachable server (RabbitMQ, PostgreSQL) is waited out and never
counts against a message; only a failure of the message itself is an attempt, and only attempts park.
"""

import logging

# aiormq logs every failed connect as an error; `connection` says it once, with how long it waits instead
logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
