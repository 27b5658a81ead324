"""The half-message broker (RocketMQ-style transactional messages with check-back); see broker/app.py."""
