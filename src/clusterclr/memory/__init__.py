"""State kept across steps: queues of keys, memory banks of features."""
